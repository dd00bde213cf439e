#!/bin/sh
# Run THERE (the device machine: one H100/H200, 16 cores), after bench/device_wheels.sh here:
#   run(command="bench/device_run.sh", carry=[".whl"], timeout_s=560)
# 1. bench/trainer_gpu_check.py: DeepSpeed ZeRO-3 bf16, the 1B-class preset, 30 steps + a
#    resume (issue 6's GPU check) -> $OUT/gpu_check.json;
# 2. bench/pack_bench.py with 1, 2, 4 and 8 shard writers on 16 cores (issue 5: how the
#    writers scale past this project's 2-core machines) -> $OUT/pack_bench.txt.
# Each step is bounded so that the first always leaves its figures. Record both in
# docs/benchmarks.md with the GPU model and the date.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
timeout 420 python3 bench/trainer_gpu_check.py --out "$OUT/gpu_check.json" 2>&1 \
  | tail -n 60 | tee "$OUT/gpu_check.log"
timeout 100 python3 bench/pack_bench.py --studies 40 --slices 10 --rounds 3 \
  --workers 1 2 4 8 --reads 50 2>&1 | tee "$OUT/pack_bench.txt"
