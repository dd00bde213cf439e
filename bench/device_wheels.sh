#!/bin/sh
# Run HERE, before a device call: puts in .whl/ the wheels the device machine lacks for
# bench/device_run.sh (its Python is 3.12 with torch, numpy, PyYAML, prometheus_client, tqdm,
# psutil, einops, msgpack, ninja, py-cpuinfo already; /work/.library/device/KINDS.md). The
# versions are this venv's, so the device runs what the tests ran. DeepSpeed publishes only a
# source archive: its pure-Python wheel is built here (no ops: the trainer hands DeepSpeed a
# torch AdamW, so nothing is JIT-compiled there).
#
#   bench/device_wheels.sh   # then: run(command="bench/device_run.sh", carry=[".whl"])
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=""
for name in pydantic pydantic-core annotated-types typing-inspection hjson pydicom; do
  pins="$pins $name==$(version "$name")"
done
# shellcheck disable=SC2086
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pins
DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl \
  "deepspeed==$(version deepspeed)"
ls -la .whl && du -sh .whl
