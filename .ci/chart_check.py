#!/usr/bin/env python3
"""Checks what helm/rolebridge renders, with default values and with overrides.

Usage: chart_check.py --helm HELM [--chart DIR] [--rolebridge BIN]

Renders the chart with `helm template` (default values; an override file;
Kubernetes 1.29 and 1.30; values the chart must refuse) and asserts on the
objects: replicas, selectors, probes, the Secret refs, the preStop hook and
terminationGracePeriodSeconds, and the mapping files (the shipped catalogs are
byte-identical to mappings/catalogs/, every file is projected to the path
`serve --mappings` reads). With --rolebridge, the rendered config.toml and
mapping directory are also loaded by the real binary (`rolebridge --config
FILE mappings validate DIR`: Config::load refuses unknown keys, then every
mapping file is validated). Every violated expectation is printed, one line
each; the exit status is 1 on any.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "rolebridge"
SHIPPED = ROOT / "mappings" / "catalogs"
CHART_CATALOGS = CHART / "files" / "catalogs"
EXAMPLE_TENANT = ROOT / "mappings" / "tenants" / "acme-liveperson.yaml"

failures: list[str] = []


def expect(ok: bool, message: str) -> bool:
    if not ok:
        failures.append(message)
    return ok


def helm(helm_bin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_bin, *args], capture_output=True, text=True, encoding="utf-8", timeout=60)


def render(helm_bin: str, label: str, *args: str) -> dict | None:
    """`helm template` into {(kind, name): object}; None (and a failure) if it fails."""
    p = helm(helm_bin, "template", "rb", str(CHART), *args)
    if p.returncode != 0:
        failures.append(f"{label}: helm template failed: {p.stderr.strip()}")
        return None
    objects = {}
    for doc in yaml.safe_load_all(p.stdout):
        if doc is None:
            continue
        key = (doc.get("kind"), doc.get("metadata", {}).get("name"))
        if not expect(key not in objects, f"{label}: {key[0]} {key[1]} is rendered twice"):
            continue
        objects[key] = doc
    return objects


def get(objects: dict, label: str, kind: str, name: str) -> dict:
    obj = objects.get((kind, name))
    expect(obj is not None, f"{label}: no {kind} named {name} (rendered: {sorted(objects)})")
    return obj or {}


def shipped_catalogs() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SHIPPED.glob("*.yaml"))}


def check_shipped_files() -> None:
    """The chart's catalogs are mappings/catalogs/, byte for byte."""
    here = CHART_CATALOGS.relative_to(ROOT) if CHART_CATALOGS.is_relative_to(ROOT) else CHART_CATALOGS
    ours = {p.name: p.read_bytes() for p in sorted(CHART_CATALOGS.glob("*"))}
    theirs = shipped_catalogs()
    expect(bool(theirs), f"no catalogs in {SHIPPED}")
    for name in sorted(set(theirs) - set(ours)):
        failures.append(f"{here}/{name} is missing (mappings/catalogs/{name} has it): "
                        f"cp mappings/catalogs/*.yaml {here}/")
    for name in sorted(set(ours) - set(theirs)):
        failures.append(f"{here}/{name} is not in mappings/catalogs/")
    for name in sorted(set(ours) & set(theirs)):
        expect(ours[name] == theirs[name],
               f"{here}/{name} differs from mappings/catalogs/{name}: "
               f"cp mappings/catalogs/{name} {here}/")


def container(deploy: dict, label: str) -> dict:
    containers = deploy.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    named = [c for c in containers if c.get("name") == "rolebridge"]
    expect(len(named) == 1, f"{label}: expected one container named rolebridge, got {[c.get('name') for c in containers]}")
    return named[0] if named else {}


def env_of(c: dict) -> dict:
    return {e.get("name"): e for e in c.get("env", [])}


def check_probe(c: dict, label: str, probe: str, path: str) -> None:
    http = (c.get(probe) or {}).get("httpGet") or {}
    expect(http.get("path") == path, f"{label}: {probe} path is {http.get('path')!r}, expected {path!r}")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    port = http.get("port")
    number = ports.get(port) if isinstance(port, str) else port
    expect(number == 8080, f"{label}: {probe} port {port!r} is not the container's port 8080 (ports: {ports})")


def check_secret_ref(env: dict, label: str, var: str, secret: str, key: str) -> None:
    e = env.get(var)
    if not expect(e is not None, f"{label}: env {var} is missing"):
        return
    expect("value" not in e, f"{label}: env {var} has an inline value; it must come from Secret {secret}")
    ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
    expect(ref.get("name") == secret and ref.get("key") == key,
           f"{label}: env {var} reads secretKeyRef {ref.get('name')!r}/{ref.get('key')!r}, expected {secret!r}/{key!r}")


def check_shutdown(deploy: dict, c: dict, label: str, pre_stop: int, grace: int, tgps: int, action: str) -> None:
    spec = deploy.get("spec", {}).get("template", {}).get("spec", {})
    got = spec.get("terminationGracePeriodSeconds")
    expect(got == tgps, f"{label}: terminationGracePeriodSeconds is {got!r}, expected {tgps}")
    expect(isinstance(got, int) and got > pre_stop + grace,
           f"{label}: terminationGracePeriodSeconds {got!r} does not exceed preStop {pre_stop} s + shutdown grace {grace} s")
    hook = ((c.get("lifecycle") or {}).get("preStop")) or {}
    if action == "sleep":
        expect(hook == {"sleep": {"seconds": pre_stop}},
               f"{label}: preStop is {hook!r}, expected the sleep action {{'sleep': {{'seconds': {pre_stop}}}}}")
    else:
        expect(hook == {"exec": {"command": ["sleep", str(pre_stop)]}},
               f"{label}: preStop is {hook!r}, expected exec ['sleep', '{pre_stop}']")


def mapping_tree(objects: dict, deploy: dict, c: dict, label: str) -> dict[str, str]:
    """The files the pod sees under ROLEBRIDGE_MAPPINGS: path -> text."""
    cm = get(objects, label, "ConfigMap", "rb-rolebridge-mappings")
    data = cm.get("data") or {}
    volumes = {v.get("name"): v for v in deploy.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])}
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts", [])}
    mdir = (env_of(c).get("ROLEBRIDGE_MAPPINGS") or {}).get("value")
    mount = mounts.get(mdir)
    if not expect(mount is not None and "subPath" not in mount,
                  f"{label}: ROLEBRIDGE_MAPPINGS={mdir!r} is not a volume mount (mounts: {sorted(mounts)})"):
        return {}
    source = (volumes.get(mount.get("name")) or {}).get("configMap") or {}
    expect(source.get("name") == "rb-rolebridge-mappings",
           f"{label}: the volume at {mdir} is configMap {source.get('name')!r}, expected rb-rolebridge-mappings")
    items = source.get("items")
    tree: dict[str, str] = {}
    if items is None:
        # Without items every key is a file at the top: serve reads none of them.
        expect(not data, f"{label}: the mappings volume has no items, so keys {sorted(data)} land outside catalogs/ and tenants/")
        return tree
    for item in items:
        key, path = item.get("key"), item.get("path", "")
        expect(key in data, f"{label}: volume item key {key!r} is not in the mappings ConfigMap")
        expect(re.fullmatch(r"(catalogs|tenants)/[^/]+\.yaml", path) is not None,
               f"{label}: {key!r} is mounted at {path!r}; serve reads only catalogs/NAME.yaml and tenants/NAME.yaml")
        expect(path not in tree, f"{label}: two items are mounted at {path!r}")
        tree[path] = data.get(key, "")
    missing = sorted(set(data) - {i.get("key") for i in items})
    expect(not missing, f"{label}: mappings ConfigMap keys {missing} are in no volume item, so the pod never sees them")
    return tree


def check_common(objects: dict, label: str, v: dict) -> tuple[dict, dict]:
    """Checks every render shares; returns the Deployment and its container."""
    deploy = get(objects, label, "Deployment", "rb-rolebridge")
    spec = deploy.get("spec", {})
    expect(spec.get("replicas") == v["replicas"], f"{label}: replicas is {spec.get('replicas')!r}, expected {v['replicas']}")
    pod_labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    expect(bool(selector) and selector.items() <= pod_labels.items(),
           f"{label}: Deployment selector {selector} does not select its pods {pod_labels}")
    svc = get(objects, label, "Service", "rb-rolebridge")
    ssel = svc.get("spec", {}).get("selector") or {}
    expect(bool(ssel) and ssel.items() <= pod_labels.items(), f"{label}: Service selector {ssel} does not select the pods {pod_labels}")
    expect(any(p.get("targetPort") in ("http", 8080) for p in svc.get("spec", {}).get("ports", [])),
           f"{label}: Service targets none of the container's port 8080")
    pdb = get(objects, label, "PodDisruptionBudget", "rb-rolebridge")
    psel = (pdb.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    expect(bool(psel) and psel.items() <= pod_labels.items(), f"{label}: PodDisruptionBudget selector {psel} does not select the pods")

    c = container(deploy, label)
    expect(c.get("args") == ["serve"], f"{label}: container args are {c.get('args')!r}, expected ['serve']")
    check_probe(c, label, "readinessProbe", "/readyz")
    check_probe(c, label, "livenessProbe", "/healthz")
    env = env_of(c)
    expect((env.get("ROLEBRIDGE_LISTEN") or {}).get("value") == "0.0.0.0:8080",
           f"{label}: ROLEBRIDGE_LISTEN is {(env.get('ROLEBRIDGE_LISTEN') or {}).get('value')!r}, expected '0.0.0.0:8080'")
    check_secret_ref(env, label, "ROLEBRIDGE_DATABASE_URL", v["secret"], v["database_key"])
    check_secret_ref(env, label, "ROLEBRIDGE_REDIS_URL", v["secret"], v["redis_key"])
    for e in c.get("env", []):
        value = str(e.get("value", ""))
        expect(not re.match(r"^(postgres(ql)?|redis|rediss)://", value),
               f"{label}: env {e.get('name')} holds a connection URL inline")
    check_shutdown(deploy, c, label, v["pre_stop"], v["grace"], v["tgps"], v["action"])

    # The config file: mounted where ROLEBRIDGE_CONFIG points, from the config ConfigMap.
    cfg_path = (env.get("ROLEBRIDGE_CONFIG") or {}).get("value")
    mount = next((m for m in c.get("volumeMounts", []) if m.get("mountPath") == cfg_path), None)
    if expect(mount is not None, f"{label}: ROLEBRIDGE_CONFIG={cfg_path!r} is not mounted"):
        volumes = {x.get("name"): x for x in spec.get("template", {}).get("spec", {}).get("volumes", [])}
        src = (volumes.get(mount.get("name")) or {}).get("configMap") or {}
        expect(src.get("name") == "rb-rolebridge-config" and mount.get("subPath") == "config.toml",
               f"{label}: {cfg_path} is {src.get('name')!r} subPath {mount.get('subPath')!r}, expected rb-rolebridge-config config.toml")
    return deploy, c


def config_text(objects: dict, label: str, grace: int = 20) -> str:
    """The rendered config.toml, checked: TOML, the shutdown keys from the chart's values."""
    text = (get(objects, label, "ConfigMap", "rb-rolebridge-config").get("data") or {}).get("config.toml")
    if not expect(isinstance(text, str), f"{label}: the config ConfigMap has no config.toml"):
        return ""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        failures.append(f"{label}: config.toml is not TOML: {e}")
        return text
    expect(parsed.get("shutdown_delay") == "0s",
           f"{label}: config.toml shutdown_delay is {parsed.get('shutdown_delay')!r}, expected \"0s\" (the preStop hook pauses)")
    got = parsed.get("shutdown_grace")
    expected = f"{grace}s"
    expect(got == expected, f"{label}: config.toml shutdown_grace is {got!r}, expected {expected!r} (shutdown.graceSeconds)")
    return text


def run_binary(binary: str, label: str, tree: dict[str, str], config: str, want_ok: bool, why: str) -> None:
    """`rolebridge --config F mappings validate DIR` on the files as the pod sees them."""
    with tempfile.TemporaryDirectory(prefix="chart-check-") as tmp:
        root = Path(tmp)
        for path, text in tree.items():
            (root / "mappings" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "mappings" / path).write_text(text, encoding="utf-8")
        (root / "mappings").mkdir(exist_ok=True)
        (root / "config.toml").write_text(config, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLEBRIDGE_")}
        p = subprocess.run([binary, "--config", str(root / "config.toml"), "mappings", "validate", str(root / "mappings")],
                           capture_output=True, text=True, encoding="utf-8", env=env, timeout=60)
        out = (p.stdout + p.stderr).strip().replace(tmp, "<render>")
        if want_ok:
            expect(p.returncode == 0, f"{label}: the binary refuses the rendered config.toml or mappings: {out}")
        else:
            expect(p.returncode != 0, f"{label}: the binary accepted {why}; the validation would not catch it")


def must_refuse(helm_bin: str, values: Path, label: str, needle: str) -> None:
    p = helm(helm_bin, "template", "rb", str(CHART), "-f", str(values))
    expect(p.returncode != 0 and needle in p.stderr,
           f"{label}: helm template should fail with {needle!r}; exit {p.returncode}, stderr {p.stderr.strip()!r}")


def main() -> int:
    global CHART, CHART_CATALOGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", default=str(CHART), help="the chart directory (default helm/rolebridge)")
    ap.add_argument("--rolebridge", help="the built binary: also load the rendered config and mappings with it")
    args = ap.parse_args()
    CHART = Path(args.chart).resolve()
    CHART_CATALOGS = CHART / "files" / "catalogs"
    if args.rolebridge and not os.access(args.rolebridge, os.X_OK):
        print(f"chart check: {args.rolebridge} is not an executable", file=sys.stderr)
        return 1

    check_shipped_files()
    catalogs = {name: data.decode("utf-8") for name, data in shipped_catalogs().items()}
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    # Default values, Kubernetes 1.30 (the sleep action) and 1.29 (exec sleep).
    defaults = {
        "replicas": values["replicaCount"], "secret": "rolebridge", "database_key": "database-url",
        "redis_key": "redis-url", "pre_stop": 5, "grace": 20, "tgps": 30, "action": "sleep",
    }
    expect(values["replicaCount"] >= 2, f"values.yaml: replicaCount {values['replicaCount']} is not several replicas")
    default_tree, default_config, default_checksum = {}, "", None
    for kube, action in (("1.30.0", "sleep"), ("1.29.0", "exec")):
        label = f"default values, Kubernetes {kube}"
        objects = render(args.helm, label, "--kube-version", kube)
        if objects is None:
            continue
        deploy, c = check_common(objects, label, dict(defaults, action=action))
        tree = mapping_tree(objects, deploy, c, label)
        want = {f"catalogs/{n}": t for n, t in catalogs.items()}
        expect(set(tree) == set(want), f"{label}: mapping files are {sorted(tree)}, expected the shipped catalogs {sorted(want)}")
        for path in sorted(set(tree) & set(want)):
            expect(tree[path] == want[path], f"{label}: {path} in the ConfigMap differs from mappings/{path}")
        default_tree, default_config = tree, config_text(objects, label)
        default_checksum = deploy["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/mappings")

    # Overrides: more replicas, another Secret, a longer shutdown, a tenant
    # mapping, one shipped catalog replaced and the others kept.
    gms = "# replaced by the override values\n" + catalogs["gms.yaml"]
    tenant = EXAMPLE_TENANT.read_text(encoding="utf-8")
    override = {
        "replicaCount": 5,
        "existingSecret": "rb-urls",
        "secretKeys": {"databaseUrl": "pg", "redisUrl": "cache"},
        "shutdown": {"preStopSleepSeconds": 10, "graceSeconds": 20, "terminationGracePeriodSeconds": 45, "preStopAction": "exec"},
        "mappings": {"catalogs": {"gms.yaml": gms}, "tenants": {"acme-liveperson.yaml": tenant}},
        # A top-level key goes before the first table.
        # The values' own config (the chart adds the shutdown keys itself).
        "config": 'mapping_poll = "2s"\n' + "".join(
            l for l in default_config.splitlines(keepends=True) if not l.startswith("shutdown_")),
    }
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        tmp = Path(tmp)
        (tmp / "override.yaml").write_text(yaml.safe_dump(override))
        label = "override values (replicaCount 5, tenant acme-liveperson, gms replaced)"
        override_tree, override_config = {}, ""
        lint = helm(args.helm, "lint", "--strict", str(CHART), "-f", str(tmp / "override.yaml"))
        expect(lint.returncode == 0, f"{label}: helm lint --strict fails: {lint.stdout.strip()} {lint.stderr.strip()}")
        objects = render(args.helm, label, "-f", str(tmp / "override.yaml"))
        if objects is not None:
            deploy, c = check_common(objects, label, {
                "replicas": 5, "secret": "rb-urls", "database_key": "pg", "redis_key": "cache",
                "pre_stop": 10, "grace": 20, "tgps": 45, "action": "exec"})
            override_tree = mapping_tree(objects, deploy, c, label)
            want = {f"catalogs/{n}": t for n, t in catalogs.items()}
            want["catalogs/gms.yaml"] = gms
            want["tenants/acme-liveperson.yaml"] = tenant
            expect(set(override_tree) == set(want), f"{label}: mapping files are {sorted(override_tree)}, expected {sorted(want)}")
            for path in sorted(set(override_tree) & set(want)):
                expect(override_tree[path] == want[path], f"{label}: {path} in the ConfigMap is not the override's text")
            checksum = deploy["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/mappings")
            expect(checksum and checksum != default_checksum,
                   f"{label}: checksum/mappings {checksum!r} equals the defaults', so a mapping change would not roll the pods")
            override_config = config_text(objects, label)

        # Values the chart must refuse, with the reason.
        for name, what, bad, needle in [
            ("grace", "terminationGracePeriodSeconds 25 (preStop 5 + grace 20)",
             {"shutdown": {"terminationGracePeriodSeconds": 25}}, "must exceed preStopSleepSeconds + graceSeconds"),
            ("yml", "tenant file acme.yml", {"mappings": {"tenants": {"acme.yml": tenant}}}, "must be NAME.yaml"),
            ("nested", "tenant file x/acme.yaml", {"mappings": {"tenants": {"x/acme.yaml": tenant}}}, "must be NAME.yaml"),
            ("notext", "tenant file given as a map", {"mappings": {"tenants": {"acme.yaml": {"catalog": "gms"}}}},
             "must be the file's YAML text"),
            ("action", "preStopAction wait", {"shutdown": {"preStopAction": "wait"}}, "must be auto, sleep or exec"),
        ]:
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(bad))
            must_refuse(args.helm, tmp / f"{name}.yaml", f"values with {what}", needle)

        # No preStop hook at all when its pause is 0 (the grace check still holds).
        label = "preStopSleepSeconds 0"
        (tmp / "nopre.yaml").write_text(
            yaml.safe_dump({"shutdown": {"preStopSleepSeconds": 0, "terminationGracePeriodSeconds": 21}}))
        objects = render(args.helm, label, "-f", str(tmp / "nopre.yaml"))
        if objects is not None:
            c = container(get(objects, label, "Deployment", "rb-rolebridge"), label)
            expect("lifecycle" not in c, f"{label}: a lifecycle hook is still rendered: {c.get('lifecycle')!r}")

    if args.rolebridge:
        run_binary(args.rolebridge, "default values", default_tree, default_config, True, "")
        run_binary(args.rolebridge, "override values", override_tree, override_config, True, "")
        # The same check must be able to fail: an unknown key, and a tenant
        # file whose catalog does not exist.
        run_binary(args.rolebridge, "self-test", default_tree, default_config + "\n[rate_limit.tenants.acme]\nper_second = 5\n",
                   False, "an unknown [rate_limit] key")
        run_binary(args.rolebridge, "self-test", dict(default_tree, **{"tenants/acme.yaml": "catalog: nope\nrules: []\n"}),
                   default_config, False, "a tenant file naming no catalog")

    lint = helm(args.helm, "lint", "--strict", str(CHART))
    expect(lint.returncode == 0, f"default values: helm lint --strict fails: {lint.stdout.strip()} {lint.stderr.strip()}")

    for f in failures:
        print(f"chart check: {f}", file=sys.stderr)
    if failures:
        print(f"chart check: {len(failures)} failed", file=sys.stderr)
        return 1
    print(f"chart check: all expectations hold{' (config and mappings loaded by ' + args.rolebridge + ')' if args.rolebridge else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
