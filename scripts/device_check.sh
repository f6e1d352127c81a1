#!/usr/bin/env bash
# Issue 6's GPU check as one script, for a session that is lent a GPU (device tool: torch preinstalled, no ffcv,
# no internet, ~10 minutes a call). It writes everything to OUT, which the device tool brings back:
#   1. bench/throughput.py: all 12 variants, bf16 and fp32, synthetic data on the device, plus the tensor
#      loader end to end for All-CNN-C (img/s, TFLOP/s, share of peak);
#   2. run_all.py: All-CNN-C on the real JPEG data (tensor backend) for a short schedule, and its test error.
# Test it on CPU first, tiny:
#   PY=.venv/bin/python DEVICE=cpu MODELS=strided-a STEPS=1 REPEATS=2 EPOCHS=1 DROPS= SUBSET=10 OUT=/tmp/dc \
#     bash scripts/device_check.sh
# On the device (the JPEG tarball is ignored by git, so carry it: copy it to data/ first and pass carry=["data"]):
#   OUT=$OUT bash scripts/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-reports/measured/device-$(date -u +%Y-%m-%d)}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-all}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-5}
BATCH=${BATCH:-256}
EPOCHS=${EPOCHS:-30}
DROPS=${DROPS-20 25}
LR=${LR:-0.05}
SUBSET=${SUBSET:-none}
SRC=${SRC:-}
if [ -z "$SRC" ]; then
  for f in ../shared/data/cifar10-jpeg.tar.gz data/cifar10-jpeg.tar.gz; do [ -f "$f" ] && SRC=$f && break; done
fi
mkdir -p "$OUT"
log="$OUT/device_check.txt"
{
  echo "# scripts/device_check.sh $(date -u +%FT%TZ)"
  echo "# DEVICE=$DEVICE MODELS=$MODELS STEPS=$STEPS REPEATS=$REPEATS BATCH=$BATCH EPOCHS=$EPOCHS DROPS=$DROPS LR=$LR SUBSET=$SUBSET SRC=$SRC"
  git log -1 --format='# commit %H %s' 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "# no nvidia-smi"
  "$PY" -c "import torch, sys; print('# python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  "$PY" -c "import accelerate; print('# accelerate', accelerate.__version__)" 2>&1
} > "$log" 2>&1

models=()
[ "$MODELS" != all ] && models=(--models $MODELS)
step() {  # run one command, log it with its time, keep going when it fails (the rest is still worth having)
  echo "\$ $*" >> "$log"
  local t0=$SECONDS
  "$@" >> "$log" 2>&1
  echo "# exit $? after $((SECONDS - t0)) s" >> "$log"
}

step "$PY" bench/throughput.py --device "$DEVICE" "${models[@]}" --precision bf16 fp32 --batch-size "$BATCH" \
  --steps "$STEPS" --repeats "$REPEATS" --json "$OUT/throughput.json" --csv "$OUT/throughput.csv"

if [ -z "$SRC" ]; then
  echo "# no CIFAR-10 source found (set SRC=...): training skipped" >> "$log"
  exit 0
fi
step "$PY" bench/run_all.py --models allcnn-c --lrs "$LR" --epochs "$EPOCHS" --lr-drops $DROPS --backend tensor \
  --subset-per-class "$SUBSET" --source "$SRC" --data-dir "$OUT/data" --out "$OUT/results" --no-progress
step "$PY" bench/throughput.py --device "$DEVICE" --models allcnn-c --precision bf16 --batch-size "$BATCH" \
  --steps "$STEPS" --repeats "$REPEATS" --loaders tensor --data-dir "$OUT/data" --json "$OUT/throughput-loader.json"
step "$PY" -m reports --results "$OUT/results" --out "$OUT/report" --throughput "$OUT/throughput.json"
rm -rf "$OUT/data"  # prepared arrays are 180 MB and reproducible; the ledger and the report are what we keep
"$PY" - "$OUT/results" >> "$log" 2>&1 <<'EOF'
import sys
from bench import results
n = lambda v: "-" if v is None else f"{v:.0f}"  # a failed or early-diverged run has no timings
for r in results.read_records(sys.argv[1]):
    print(f"# {r['display_name']} lr={r['lr']} {r['status']}: test error {r['test_error_pct']}% after "
          f"{r['epochs_completed']} epochs, {n(r['wall_time_s'])} s, train {n(r['train_images_per_s'])} img/s, "
          f"eval {n(r['eval_images_per_s'])} img/s, {r['device_name']}, precision {r['precision']}")
EOF
cat "$log"
