#!/usr/bin/env bash
# The GPU check as one script, sized for the lent GPU machines (FACTS.md: torch 2.11, no ffcv, no internet, `python3`,
# <= 10 minutes a call, and only <= 8 files of <= 16 MiB, <= 2 folders deep under $OUT come back):
#   1. bench/throughput.py: the models at bf16 and fp32 (one process), fp16 (its own process), synthetic data;
#   2. run_all.py: All-CNN-C (TRAIN_MODEL) on the real JPEG data (tensor backend) for a short schedule, and its test error;
#   3. the tensor loader end to end, and the report.
# Scratch data, the ledger and the report live under /tmp ($SCRATCH); every step runs under `timeout` within a total
# budget (TOTAL seconds, default 450: under 8 minutes); $OUT gets at most 6 flat files: device_check.txt (the log),
# throughput.json, throughput-fp16.json, throughput-loader.json, ledger.tar.gz (runs + any checkpoints) and
# report.tar.gz. A training step stopped by its timeout checkpoints on SIGTERM; the checkpoint is in the ledger.
# On the device (the JPEG tarball is ignored by git: copy it to data/ and pass carry=["data"]):
#   OUT=$OUT bash scripts/device_check.sh
# Tiny, on CPU (tests/test_device_check.py): DEVICE=cpu MODELS=strided-a TRAIN_MODEL=strided-a STEPS=1 REPEATS=1 \
#   WARMUP=1 EPOCHS=1 DROPS= SUBSET=10 BATCH=32 DATA=<prepared dir> OUT=/tmp/dc bash scripts/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder that comes back}
own_scratch=${SCRATCH:+no}
SCRATCH=${SCRATCH:-$(mktemp -d /tmp/device_check.XXXXXX)}
DATA=${DATA:-$SCRATCH/data}
TOTAL=${TOTAL:-450}  # seconds for all steps; each also has its own limit (see `step`)
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-all}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-5}
BATCH=${BATCH:-256}
EPOCHS=${EPOCHS:-20}
DROPS=${DROPS-12 16}
LR=${LR:-0.05}
TRAIN_MODEL=${TRAIN_MODEL:-allcnn-c}
WARMUP=${WARMUP:-5}
SUBSET=${SUBSET:-none}
SRC=${SRC:-}
if [ -z "$SRC" ]; then
  for f in ../shared/data/cifar10-jpeg.tar.gz data/cifar10-jpeg.tar.gz; do [ -f "$f" ] && SRC=$f && break; done
fi
mkdir -p "$OUT" "$SCRATCH"
log="$OUT/device_check.txt"
start=$SECONDS
{
  echo "# scripts/device_check.sh $(date -u +%FT%TZ)"
  echo "# DEVICE=$DEVICE MODELS=$MODELS STEPS=$STEPS REPEATS=$REPEATS BATCH=$BATCH EPOCHS=$EPOCHS DROPS=$DROPS LR=$LR SUBSET=$SUBSET SRC=$SRC TOTAL=$TOTAL"
  git log -1 --format='# commit %H %s' 2>/dev/null || true
  timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "# no nvidia-smi"
  timeout 60 "$PY" -c "import torch, sys, accelerate; print('# python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'accelerate', accelerate.__version__)"
} > "$log" 2>&1

step() {  # step SECONDS CMD...: run under timeout (SIGTERM, then SIGKILL 20 s later) within what is left of TOTAL
  local want=${STEP_MAX:-$1}; shift  # STEP_MAX: one limit for every step (a slow CPU in the test suite)
  local left=$((TOTAL - (SECONDS - start)))
  local limit=$(( want < left ? want : left ))
  if [ "$limit" -lt 10 ]; then echo "# skipped (time budget spent): $*" >> "$log"; return; fi
  echo "\$ timeout $limit $*" >> "$log"
  local t0=$SECONDS
  timeout -k 20 "$limit" "$@" >> "$log" 2>&1
  echo "# exit $? after $((SECONDS - t0)) s" >> "$log"
}

models=()
[ "$MODELS" != all ] && models=(--models $MODELS)
common=(--device "$DEVICE" --batch-size "$BATCH" --steps "$STEPS" --repeats "$REPEATS" --warmup "$WARMUP")
step 120 "$PY" bench/throughput.py "${common[@]}" "${models[@]}" --precision bf16 fp32 --json "$OUT/throughput.json"
[ "$DEVICE" = cuda ] && step 60 "$PY" bench/throughput.py "${common[@]}" "${models[@]}" --precision fp16 \
  --json "$OUT/throughput-fp16.json"  # its own process; Accelerate has no fp16 autocast on CPU

if [ -n "$SRC" ]; then
  step 200 "$PY" bench/run_all.py --models "$TRAIN_MODEL" --lrs "$LR" --epochs "$EPOCHS" --lr-drops $DROPS \
    --backend tensor --subset-per-class "$SUBSET" --source "$SRC" --data-dir "$DATA" --out "$SCRATCH/results" \
    --no-progress
  step 45 "$PY" bench/throughput.py "${common[@]}" --models "$TRAIN_MODEL" --precision bf16 --loaders tensor \
    --data-dir "$DATA" --json "$OUT/throughput-loader.json"
else
  echo "# no CIFAR-10 source found (set SRC=...): training skipped" >> "$log"
fi
step 45 "$PY" -m reports --results "$SCRATCH/results" --out "$SCRATCH/report" --throughput "$OUT/throughput.json"
timeout 30 "$PY" - "$SCRATCH/results" >> "$log" 2>&1 <<'EOF'
import sys
from bench import results
n = lambda v: "-" if v is None else f"{v:.0f}"  # a failed or early-diverged run has no timings
for r in results.read_records(sys.argv[1]):
    print(f"# {r['display_name']} lr={r['lr']} {r['status']}: test error {r['test_error_pct']}% after "
          f"{r['epochs_completed']} epochs, {n(r['wall_time_s'])} s, train {n(r['train_images_per_s'])} img/s, "
          f"eval {n(r['eval_images_per_s'])} img/s, {r['device_name']}, precision {r['precision']}")
EOF
mkdir -p "$SCRATCH/results" "$SCRATCH/report"
timeout 60 tar -czf "$OUT/ledger.tar.gz" -C "$SCRATCH" results >> "$log" 2>&1
timeout 60 tar -czf "$OUT/report.tar.gz" -C "$SCRATCH" report >> "$log" 2>&1
echo "# done in $((SECONDS - start)) s; in OUT: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$log"
# prepared arrays are 180 MB and reproducible; the archives hold what we keep
[ "${own_scratch:-yes}" = yes ] && rm -rf "$SCRATCH"
cat "$log"
