// The admin page: one tenant's mapping file (edit, plan, guarded apply),
// its history with rollback, the audit trail, and a user view that draws
// group -> rule -> role/profile -> permission. Talks only to this server's
// /api/v1/tenants/{tenant} admin API; the token stays in sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { tenant: "", token: "", version: null, hash: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function say(text) {
  const m = $("message");
  m.textContent = text;
  m.classList.add("show");
  clearTimeout(say.timer);
  say.timer = setTimeout(() => m.classList.remove("show"), 6000);
}

async function api(method, path, body) {
  const res = await fetch(`/api/v1/tenants/${encodeURIComponent(state.tenant)}${path}`, {
    method,
    headers: Object.assign({ Authorization: `Bearer ${state.token}` }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = { error: { message: text } }; }
  return { status: res.status, body: json };
}

function target(t) {
  return t ? `${t.kind.replace("_", " ")} ${t.id}` : "";
}

function at(loc) {
  return loc ? `${loc.file}:${loc.line}:${loc.column}` : "";
}

// ---- the editor ----------------------------------------------------------

function renderGutter(bad) {
  const lines = $("text").value.split("\n").length;
  const g = $("gutter");
  g.replaceChildren();
  for (let i = 1; i <= lines; i++) {
    g.append(el("span", bad.has(i) ? { class: "bad", title: "error on this line" } : {}, String(i)), "\n");
  }
}

function showErrors(errors) {
  const list = $("errors");
  list.replaceChildren();
  const bad = new Set();
  for (const e of errors) {
    bad.add(e.line);
    list.append(el("li", {
      class: "error",
      "data-line": e.line,
      onclick: () => jump(e.line, e.column),
    }, `${e.file}:${e.line}:${e.column}: ${e.message}`));
  }
  renderGutter(bad);
}

function jump(line, column) {
  const t = $("text");
  const lines = t.value.split("\n");
  let offset = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
  offset += Math.max(0, column - 1);
  t.focus();
  t.setSelectionRange(offset, offset);
}

async function loadMapping() {
  const r = await api("GET", "/mappings");
  if (r.status !== 200) throw new Error(r.body?.error?.message || `HTTP ${r.status}`);
  state.version = r.body.version;
  $("file").textContent = r.body.file;
  $("version").textContent = r.body.version === null ? "no version" : `v${r.body.version}`;
  $("text").value = r.body.text || "";
  showErrors([]);
  $("verdict").replaceChildren();
  $("plan-result").replaceChildren();
}

function handleError(r) {
  const err = r.body?.error || {};
  if (err.code === "invalid_mapping") {
    showErrors(err.errors || []);
    say(`${(err.errors || []).length} error(s) in the mapping`);
  } else {
    say(err.message || `HTTP ${r.status}`);
  }
}

function renderPlan(plan) {
  const out = $("plan-result");
  out.replaceChildren();
  state.hash = plan.hash;
  const t = plan.totals;
  out.append(el("p", { id: "plan-totals" },
    `${t.users} users: ${t.users_changed} change, `,
    el("span", { class: "gain" }, `${t.users_gaining} gain`), ", ",
    el("span", { class: "loss" }, `${t.users_losing} lose`), `; `,
    el("span", { class: "gain" }, `+${t.permissions_gained}`), " / ",
    el("span", { class: "loss" }, `-${t.permissions_lost}`), " permission grants; ",
    el("span", { class: "refused" }, `${t.newly_refused} newly refused`), `. Plan ${plan.hash.slice(0, 12)}…`));
  const table = el("table", { id: "plan-table" },
    el("thead", {}, el("tr", {}, ["user", "roles", "profiles", "permissions", "newly refused"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const tenant of plan.tenants) {
    for (const u of tenant.users) {
      const cell = (gained, lost) => el("td", {},
        gained.map((x) => el("div", { class: "gain" }, `+ ${x}`)),
        lost.map((x) => el("div", { class: "loss" }, `− ${x}`)));
      body.append(el("tr", { "data-user": u.userName },
        el("td", {}, u.userName),
        cell(u.roles_gained, u.roles_lost),
        cell(u.profiles_gained, u.profiles_lost),
        cell(u.permissions_gained, u.permissions_lost),
        el("td", { class: "refused" }, u.newly_refused.join(", "))));
    }
    for (const p of tenant.protected) {
      out.append(el("p", {}, `protected role ${p.role}: ${p.holders_before} holder(s) → ${p.holders_after}`));
    }
  }
  table.append(body);
  out.append(table);
  renderVerdict(plan.guard, plan.hash);
}

function renderVerdict(reasons, hash) {
  const v = $("verdict");
  v.replaceChildren();
  if (!reasons || reasons.length === 0) {
    v.append(el("p", { class: "verdict-pass", id: "guard" }, "Guard: passes."));
  } else {
    v.append(el("p", { class: "verdict-stop", id: "guard" }, "Guard: this change needs confirmation."),
      el("ul", {}, reasons.map((r) => el("li", {}, r))));
    if (hash) v.append(el("p", {}, `Confirm with plan ${hash.slice(0, 12)}… to apply it.`));
  }
}

async function plan() {
  showErrors([]);
  const r = await api("POST", "/mappings/plan", { base: state.version, text: $("text").value });
  if (r.status !== 200) return handleError(r);
  renderPlan(r.body);
  say("Planned.");
}

async function apply() {
  showErrors([]);
  const text = $("text").value;
  let r = await api("POST", "/mappings", { base: state.version, text });
  if (r.status === 428) {
    const err = r.body.error;
    renderVerdict(err.reasons, err.plan_hash);
    if (!window.confirm(`The guard stops this change:\n\n${err.reasons.join("\n")}\n\nApply it anyway?`)) {
      say("Not applied.");
      return;
    }
    r = await api("POST", "/mappings", { base: state.version, text, confirm: err.plan_hash });
  }
  if (r.status !== 201) return handleError(r);
  say(`Applied as v${r.body.version}.`);
  await refresh();
  renderPlan(r.body.plan);
}

// ---- history and audit -----------------------------------------------------

async function rollback(version) {
  const planned = await api("POST", "/mappings/rollback", { version, base: state.version, plan_only: true });
  if (planned.status !== 200) return handleError(planned);
  renderPlan(planned.body);
  const guarded = planned.body.guard.length > 0;
  const question = guarded
    ? `Roll back to v${version}? The guard stops it:\n\n${planned.body.guard.join("\n")}`
    : `Roll back to v${version}? ${planned.body.totals.users_changed} user(s) change.`;
  if (!window.confirm(question)) return say("Not rolled back.");
  const r = await api("POST", "/mappings/rollback", {
    version, base: state.version, confirm: planned.body.hash,
  });
  if (r.status !== 201) return handleError(r);
  say(`Rolled back to v${version} as v${r.body.version}.`);
  await refresh();
}

async function loadHistory() {
  const r = await api("GET", "/mappings/versions");
  const body = $("history").querySelector("tbody");
  body.replaceChildren();
  if (r.status !== 200) return handleError(r);
  for (const v of r.body.versions) {
    const current = v.version === state.version;
    body.append(el("tr", { "data-version": v.version },
      el("td", {}, `v${v.version}`, current ? " (in force)" : ""),
      el("td", {}, v.created),
      el("td", {}, v.origin + (v.rollback_of ? ` of v${v.rollback_of}` : "")),
      el("td", {}, v.actor.label ? `${v.actor.label} (${v.actor.id})` : v.actor.id),
      el("td", {}, current ? "" : el("button", { class: "secondary rollback", onclick: () => rollback(v.version) }, "Roll back"))));
  }
}

async function loadAudit() {
  const r = await api("GET", "/mappings/audit");
  const body = $("audit").querySelector("tbody");
  body.replaceChildren();
  if (r.status !== 200) return handleError(r);
  for (const a of r.body.records) {
    body.append(el("tr", { class: `audit-${a.action}` },
      el("td", {}, a.at), el("td", {}, a.action),
      el("td", {}, a.actor.label ? `${a.actor.label} (${a.actor.id})` : a.actor.id),
      el("td", {}, a.base ? `v${a.base}` : "-"), el("td", {}, a.version ? `v${a.version}` : "-"),
      el("td", {}, a.totals ? String(a.totals.users_losing) : "-"), el("td", {}, a.detail || "")));
  }
}

async function refresh() {
  await loadMapping();
  await Promise.all([loadHistory(), loadAudit()]);
}

// ---- the user view ------------------------------------------------------------

function why(w) {
  switch (w.reason) {
    case "inactive_user": return "the user is inactive";
    case "not_in_catalog": return "the catalog has no such permission";
    case "no_rule_matched": return "no rule matched any of the user's groups, and there is no default role";
    case "off_in_assignment": return `${target(w.target)} has it switched off`;
    case "lost_assignment": return `${target(w.lost.target)} was not granted: ${w.lost.reason.kind.replaceAll("_", " ")}`;
    case "missing_requires": return `dropped: requires ${[...w.missing, ...w.missing_in_role.flatMap((r) => r.missing)].join(", ") || "(implied by dropped " + w.implied_by.join(", ") + ")"}`;
    case "not_in_assignments": return `nothing the user holds grants it; ${w.granted_by.map(target).join(", ") || "no target"} would`;
    default: return w.reason;
  }
}

function renderExplanation(d) {
  const out = $("user-result");
  out.replaceChildren();
  out.append(el("p", {}, `${d.user_name} (${d.user_id}), ${d.active ? "active" : "inactive"}, catalog ${d.catalog}`));
  // group -> rule -> target -> permissions, from each grant's source.
  const tree = new Map();
  const key = (s) => s.kind === "rule" ? `${s.group.id}|${s.rule.index}` : "default";
  for (const p of d.permissions) {
    for (const g of p.grants) {
      const k = key(g.source);
      if (!tree.has(k)) tree.set(k, { source: g.source, targets: new Map() });
      const node = tree.get(k);
      const tk = target(g.target);
      if (!node.targets.has(tk)) node.targets.set(tk, []);
      node.targets.get(tk).push({ permission: p.permission, state: g.state });
    }
  }
  for (const a of d.assignments) {
    const k = key(a.source);
    if (!tree.has(k)) tree.set(k, { source: a.source, targets: new Map() });
    if (!tree.get(k).targets.has(target(a.target))) tree.get(k).targets.set(target(a.target), []);
  }
  const root = el("ul", { id: "chain" });
  for (const { source, targets } of tree.values()) {
    const group = source.kind === "rule"
      ? el("span", { class: "node n-group" }, `group ${source.group.display_name}`, source.group.via.length ? ` (via ${source.group.via.join(" → ")})` : "")
      : el("span", { class: "node n-group" }, "every active user");
    const rule = source.kind === "rule"
      ? el("span", { class: "node n-rule" }, `rule ${source.rule.id || "#" + source.rule.index} (${at(source.rule.at)})`)
      : el("span", { class: "node n-rule" }, `default_role (${at(source.at)})`);
    const tlist = el("ul");
    for (const [t, perms] of targets) {
      tlist.append(el("li", {}, el("span", { class: "node n-target" }, t),
        el("ul", {}, perms.map((p) => el("li", { class: "perm" }, el("span", { class: "node n-perm" }, p.permission), ` ${p.state.state}${p.state.state === "implied" ? " by " + p.state.reason.by : ""}`)))));
    }
    root.append(el("li", {}, group, el("ul", {}, el("li", {}, rule, tlist))));
  }
  out.append(el("div", { class: "tree" }, root));
  const denied = d.permissions.filter((p) => !p.granted);
  if (denied.length) {
    out.append(el("h3", {}, "Not granted"),
      el("ul", { id: "denials" }, denied.map((p) => el("li", {}, el("span", { class: "node n-denied" }, p.permission), " ", p.why_not.map(why).join("; ")))));
  }
  if (d.lost.length) {
    out.append(el("h3", {}, "Offered but not held"),
      el("ul", {}, d.lost.map((l) => el("li", {}, `${target(l.target)}: ${l.reason.kind.replaceAll("_", " ")}`))));
  }
}

async function explain(ev) {
  ev.preventDefault();
  const q = new URLSearchParams({ user: $("user").value });
  if ($("permission").value) q.set("permission", $("permission").value);
  const r = await api("GET", `/explain?${q}`);
  if (r.status !== 200) return handleError(r);
  renderExplanation(r.body.detail);
}

// ---- start -------------------------------------------------------------------

async function connect(ev) {
  if (ev) ev.preventDefault();
  state.tenant = $("tenant").value.trim();
  state.token = $("token").value.trim();
  sessionStorage.setItem("rolebridge.tenant", state.tenant);
  sessionStorage.setItem("rolebridge.token", state.token);
  try {
    await refresh();
    $("app").hidden = false;
    $("who").textContent = `tenant ${state.tenant}`;
  } catch (e) {
    $("app").hidden = true;
    say(`Cannot connect: ${e.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", connect);
  $("plan").addEventListener("click", plan);
  $("apply").addEventListener("click", apply);
  $("reload").addEventListener("click", refresh);
  $("user-form").addEventListener("submit", explain);
  $("text").addEventListener("input", () => renderGutter(new Set()));
  const params = new URLSearchParams(location.search);
  $("tenant").value = params.get("tenant") || sessionStorage.getItem("rolebridge.tenant") || "";
  $("token").value = sessionStorage.getItem("rolebridge.token") || "";
  if ($("tenant").value && $("token").value) connect();
});
