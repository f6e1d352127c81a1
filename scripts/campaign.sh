#!/usr/bin/env bash
# The GPU campaign (issue 13) as one script, sized for the lent GPU machines (FACTS.md: torch 2.11, no ffcv, no
# internet, `python3`, <= 10 minutes a call, only <= 8 files of <= 16 MiB, <= 2 folders deep under $OUT come back):
#   1. bench/throughput.py: the 12 variants in bf16 (synthetic data, batch 256), about a minute;
#   2. bench/run_all.py with the paper preset (350 epochs, x0.1 at 200/250/300, bf16, GCN+ZCA, tensor backend),
#      continuing the committed ledger ($LEDGER: runs/ and checkpoints/, skipped or resumed), one model at a time in
#      $ORDER (All-CNN-C first), each at the LRs in $LRS order, until TOTAL - RESERVE seconds are used; the run
#      still training then is checkpointed on SIGTERM (run_all) and its checkpoint travels back with the ledger;
#   3. $OUT: campaign.txt (the log), throughput.json, ledger.tar.gz (runs/ and checkpoints/, no claims).
# The report is made at home from the committed ledger (python -m reports --results reports/measured/campaign):
# device time buys training only. Work files live in $WORK (git-ignored, so a warm machine keeps them between
# calls and a second call goes on where the first stopped). A failed run stops the campaign at once (fail fast:
# the call returns early and leaves time to fix and rerun).
# On the device (copy ../shared/data/cifar10-jpeg.tar.gz to data-src/, which is git-ignored, and carry it):
#   OUT=$OUT bash scripts/campaign.sh                      # run(command=..., carry=["data-src"])
# Tiny, on CPU (tests/test_campaign.py): DEVICE=cpu ORDER=strided-a LRS=0.05 EXTRA="--epochs 2 --lr-drops 1 ..."
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder that comes back}
TOTAL=${TOTAL:-540}    # seconds for the whole script (the call's limit should be ~30 s more)
RESERVE=${RESERVE:-25} # seconds kept back from training for the summary and the archive
DEVICE=${DEVICE:-cuda}
LEDGER=${LEDGER:-reports/measured/campaign}  # the committed ledger this campaign continues
WORK=${WORK:-campaign-work}
ORDER=${ORDER:-allcnn-c model-c convpool-c strided-c allcnn-b model-b convpool-b strided-b \
allcnn-a model-a convpool-a strided-a}
LRS=${LRS:-0.05 0.01 0.1 0.25}  # all four of the paper's; the ones that trained the Caffe/neon ports first
THROUGHPUT=${THROUGHPUT-"--batch-size 256 --steps 15 --repeats 3 --warmup 5"}
EXTRA=${EXTRA:-}  # more run_all options (tiny CPU tests: --epochs, --subset-per-class, --batch-size)
SRC=${SRC:-}
if [ -z "$SRC" ]; then
  for f in data-src/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do [ -f "$f" ] && SRC=$f && break; done
fi
[ -n "$SRC" ] || { echo "campaign: no CIFAR-10 source (copy cifar10-jpeg.tar.gz to data-src/ or set SRC)" >&2; exit 2; }
mkdir -p "$OUT" "$WORK/results/runs" "$WORK/results/checkpoints"
log="$OUT/campaign.txt"
start=$SECONDS
{
  echo "# scripts/campaign.sh $(date -u +%FT%TZ)"
  echo "# DEVICE=$DEVICE TOTAL=$TOTAL RESERVE=$RESERVE LEDGER=$LEDGER ORDER=$ORDER LRS=$LRS SRC=$SRC EXTRA=$EXTRA"
  git log -1 --format='# commit %H %s' 2>/dev/null || true
  timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null \
    || echo "# no nvidia-smi"
  timeout 60 "$PY" -c "import torch, sys, accelerate; print('# python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'accelerate', \
accelerate.__version__)"
} > "$log" 2>&1
left() { echo $((TOTAL - RESERVE - (SECONDS - start))); }

# the committed ledger first; a warm machine's newer files (same names) are kept
for sub in runs checkpoints; do
  [ -d "$LEDGER/$sub" ] && cp -n "$LEDGER/$sub"/* "$WORK/results/$sub/" 2>/dev/null
done
echo "# continuing: $(ls "$WORK/results/runs" | grep -c '\.json$') records, \
$(ls "$WORK/results/checkpoints" | grep -c '\.pt$') checkpoints" >> "$log"

if [ -n "$THROUGHPUT" ]; then
  limit=$(( $(left) < 90 ? $(left) : 90 ))
  echo "\$ timeout $limit bench/throughput.py --device $DEVICE --precision bf16 $THROUGHPUT" >> "$log"
  t0=$SECONDS
  # shellcheck disable=SC2086  # word splitting wanted
  timeout -k 10 "$limit" "$PY" bench/throughput.py --device "$DEVICE" --precision bf16 $THROUGHPUT \
    --json "$OUT/throughput.json" >> "$log" 2>&1
  echo "# exit $? after $((SECONDS - t0)) s" >> "$log"
fi

failed() {  # records of this model in the work ledger whose status is failed
  "$PY" - "$WORK/results" "$1" <<'EOF'
import sys
from bench import results
print(sum(r["model"] == sys.argv[2] and r["status"] == "failed" for r in results.read_records(sys.argv[1])))
EOF
}

for model in $ORDER; do
  limit=$(left)
  if [ "$limit" -lt 30 ]; then echo "# time budget spent before $model" >> "$log"; break; fi
  cmd=("$PY" bench/run_all.py --preset paper --models "$model" --lrs $LRS --backend tensor --source "$SRC"
       --data-dir "$WORK/data" --out "$WORK/results" $EXTRA)
  echo "\$ timeout $limit ${cmd[*]}" >> "$log"
  t0=$SECONDS
  timeout -k 30 "$limit" "${cmd[@]}" >> "$log" 2>&1
  rc=$?
  echo "# exit $rc after $((SECONDS - t0)) s" >> "$log"
  [ "$rc" = 124 ] && break  # time is up: the run in progress checkpointed on SIGTERM
  n=$(failed "$model")
  if [ "$rc" != 0 ] || [ "$n" != 0 ]; then echo "# stopping: exit $rc, $n failed runs of $model" >> "$log"; break; fi
done

# a finished run's checkpoint copied in from the committed ledger is stale: keep only unfinished runs' checkpoints
for ckpt in "$WORK/results/checkpoints"/*.pt; do
  [ -e "$ckpt" ] && [ -e "$WORK/results/runs/$(basename "$ckpt" .pt).json" ] && rm -f "$ckpt"
done
timeout 30 "$PY" - "$WORK/results" >> "$log" 2>&1 <<'EOF'
import sys
from bench import results
n = lambda v: "-" if v is None else f"{v:.0f}"  # a failed or early-diverged run has no timings
for r in results.read_records(sys.argv[1]):
    print(f"# {r['display_name']} lr={r['lr']} {r['status']}: test error {r['test_error_pct']}% after "
          f"{r['epochs_completed']} epochs, {n(r['wall_time_s'])} s, train {n(r['train_images_per_s'])} img/s, "
          f"eval {n(r['eval_images_per_s'])} img/s, {r['device_name']}, precision {r['precision']}")
EOF
timeout 30 tar -czf "$OUT/ledger.tar.gz" -C "$WORK/results" runs checkpoints >> "$log" 2>&1
echo "# done in $((SECONDS - start)) s; in OUT: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$log"
cat "$log"
