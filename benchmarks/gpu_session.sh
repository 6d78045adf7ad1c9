#!/usr/bin/env bash
# One device call that measures itjax's GPU figures (see benchmarks/README.md), writing logs and JSON to $OUT.
# Run from the repo root on the GPU machine, with gin's wheel carried in .whl/ (the image has no gin):
#   bash benchmarks/gpu_session.sh [accelerator|preference|rollout|8b ...]   (default: accelerator preference)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  ${PY:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
${PY:-python3} -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt"
for part in "${@:-accelerator preference}"; do
  for p in $part; do
    start=$(date +%s)
    case $p in
      accelerator) ${PY:-python3} benchmarks/accelerator.py --shapes 1b --lengths 2048,8192 --child_timeout 240 \
                     --json "$OUT/accelerator_1b.json" 2>&1 | tee "$OUT/accelerator_1b.log" ;;
      8b) ${PY:-python3} benchmarks/accelerator.py --shapes 8b --lengths 4096 --child_timeout 240 \
            --json "$OUT/accelerator_8b.json" 2>&1 | tee "$OUT/accelerator_8b.log" ;;
      preference) ${PY:-python3} benchmarks/preference_step.py --json "$OUT/preference.json" 2>&1 \
                    | tee "$OUT/preference.log" ;;
      rollout) ${PY:-python3} benchmarks/rollout.py --json "$OUT/rollout.json" 2>&1 | tee "$OUT/rollout.log" ;;
      *) echo "unknown part $p" ;;
    esac
    echo "== $p took $(( $(date +%s) - start )) s"
  done
done
