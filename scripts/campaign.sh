#!/usr/bin/env bash
# The GPU campaign (issue 13) as one script, sized for the lent GPU machines (FACTS.md: torch 2.11, no ffcv, no
# internet, `python3`, <= 10 minutes a call, only <= 8 files of <= 16 MiB, <= 2 folders deep under $OUT come back):
#   1. bench/throughput.py: the 12 variants in bf16 (synthetic data, batch 256; 28 s on an H200 without --fused),
#      and each as FUSED runs trained as one model (bench/fused.py, issue 12: does fusing the LR grid pay here?);
#   (then loaders.prepare, once, into $WORK/data: the run_all processes of step 4 share it)
#   1b. tests/test_graphs.py's GPU tests (marked gpu; GRAPHS=auto): when the CUDA-graphed step matches the eager one
#      here, training uses --cuda-graphs (bench/graphs.py) and the throughput of $GRAPHED (All-CNN-C: what the next
#      choice needs) is measured again graphed, the fused group too;
#   1c. FUSE=auto: training fuses each model's LRs into one model (run_all --fuse-lrs; one process, no probe) when
#      tests/test_fused.py's GPU test passed here and the fused All-CNN-C group trained >= 1.25x the images/s of
#      the separate step, both as training will run (graphed when GRAPHS=1);
#   2. scripts/concurrency_probe.py (PARALLEL=auto, not with FUSE=1): whether K run_all processes at once train more
#      images per second in all than one (the step is launch-bound on an H200: reports/measured/campaign); picks K;
#      what 1b-2 measured, and the switches the caller set, are kept in $WORK/decided (not a switch whose test timed
#      out or whose probe failed, nor FUSE when step 1 had no fused All-CNN-C row): a later call on the same warm
#      machine takes them for every switch still auto and skips step 1 (unless THROUGHPUT is given), so it trains
#      at once;
#   3. scripts/init_probe.py, only when INIT_PROBE is given (issue 10's init evidence, repeated on the GPU; about 2
#      minutes for "--models allcnn-c convpool-c --lrs 0.05 0.01 --inits caffe-xavier kaiming --epochs 6"): off
#      by default, because every minute before step 4 is a minute less of Table 3;
#   4. bench/run_all.py with the paper preset (350 epochs, x0.1 at 200/250/300, bf16, GCN+ZCA, tensor backend),
#      continuing the committed ledger ($LEDGER: runs/ and checkpoints/, skipped or resumed), K workers, each taking
#      the models of $ORDER (All-CNN-C first) in turn, their LRs in $LRS order, a run_all process per model sharing
#      the ledger (bench/workqueue.py claims: each trains a different run; a worker with nothing left to claim of a
#      model goes on to the next while the others still train theirs), until TOTAL - RESERVE seconds are used;
#      runs still training then checkpoint on SIGTERM (run_all) and their checkpoints travel back with the ledger.
#      They also checkpoint every $CHECKPOINT_MINUTES (2; the paper preset's 10 is as long as a call, so SIGTERM's
#      would be the only one), and $OUT/ledger.tar.gz is refreshed within seconds of each new record: a call killed
#      outright (the device tool kills at its timeout_s) still returns every record finished before;
#   5. $OUT: campaign.txt (the log), throughput.json, throughput-graphs.json, concurrency.json, init-probe.txt,
#      ledger.tar.gz (runs/), each when its step ran, and each unfinished run's checkpoint as <run key>.pt.
# Time: every step's limit ends by TOTAL - RESERVE. What may run after that is at most KILL_AFTER (10 s: a step
# still running at its SIGTERM, e.g. run_all checkpointing, which takes a few seconds, gets that long before SIGKILL)
# + 0.5 s (its worker's POLL) + 5 s (the POLL sleep or a ledger archive under way when it ended) + 5 s (the archive of
# the last records; each state of the records is archived once, a timed-out tar is not tried again) + 5 s (the
# summary) + ~3 s (checkpoint copies, the log) = 28.5 s <= TAIL = 30 s (a run_all that ends by itself just before: its
# failed-run check, 10 s, in place of KILL_AFTER). So RESERVE must be at least 30, and the script ends by TOTAL. A
# run_all stopped earlier (another worker's failed, below) gets the same KILL_AFTER. TOTAL may be at most 570: a
# call runs at most 600 s, and its timeout_s should be TOTAL + 30 (a margin for what this arithmetic does not count:
# starting bash, `timeout`'s own delays).
# At home, `python -m bench.ingest FOLDER --name DATE-GPU` brings what came back into $LEDGER (records, checkpoints
# of unfinished runs, logs; once, checked, nothing executed). The report is made from the committed ledger (python
# -m reports --results reports/measured/campaign; python -m reports.campaign for the README's table): device time
# buys measurements only. Work files live in
# $WORK (git-ignored: a warm machine keeps them between calls, so a second call goes on where the first stopped).
# A failed run stops the campaign at once (fail fast: the call returns early, leaving time to fix and rerun): no
# worker starts another model, and the others' run_all get SIGTERM within a second (their runs checkpoint).
# On the device (copy ../shared/data/cifar10-jpeg.tar.gz to data-src/, which is git-ignored, and carry it):
#   OUT=$OUT CODE=<local HEAD> bash scripts/campaign.sh    # run(command=..., carry=["data-src"])
# and at once, while the machine is warm, a second call with the same command and a smaller TOTAL.
# Tiny, on CPU: tests/test_campaign.py.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder that comes back}
TOTAL=${TOTAL:-540}    # seconds for the whole script (the call's timeout_s should be 30 s more; at most 570)
RESERVE=${RESERVE:-30} # seconds kept back from training for what follows it (>= TAIL: the header's arithmetic)
KILL_AFTER=10 POLL=0.5 TAIL=30  # SIGTERM to SIGKILL; how often a running step is looked at, by its worker and
# by the main loop (every 1 and 2 s, a finished step was seen up to 3 s late: device time); the end's worst case
CHECKPOINT_MINUTES=${CHECKPOINT_MINUTES:-2}  # run_all --checkpoint-minutes: several checkpoints within a call
DEVICE=${DEVICE:-cuda}
LEDGER=${LEDGER:-reports/measured/campaign}  # the committed ledger this campaign continues
WORK=${WORK:-campaign-work}
ORDER=${ORDER:-allcnn-c model-c convpool-c strided-c allcnn-b model-b convpool-b strided-b \
allcnn-a model-a convpool-a strided-a}
LRS=${LRS:-0.05 0.01 0.1 0.25}  # all four of the paper's; the ones that trained the Caffe/neon ports first
FUSE=${FUSE:-auto}          # run_all --fuse-lrs; auto: step 1c decides; 0: off; 1: on
GRAPHS=${GRAPHS:-auto}      # --cuda-graphs for training; auto: on when tests/test_graphs.py passes on this GPU
PARALLEL=${PARALLEL:-auto}  # run_all processes training at once; auto: the concurrency probe decides
decided="$WORK/decided"     # what an earlier call on this machine chose for the three switches above
if [ -f "$decided" ]; then
  while IFS='=' read -r k v; do  # plain KEY=digits lines only: nothing in the file is executed
    [[ $k =~ ^(GRAPHS|FUSE|PARALLEL)$ && $v =~ ^[0-9]+$ && ${!k} == auto ]] && printf -v "$k" '%s' "$v"
  done < "$decided"
  THROUGHPUT=${THROUGHPUT-}  # measured by that call already
fi
THROUGHPUT=${THROUGHPUT-"--batch-size 256 --steps 15 --repeats 3 --warmup 5"}  # empty: skip step 1
FUSED=${FUSED-4}            # step 1's fused group size (4: the LR grid); empty: no fused rows
GRAPHED=${GRAPHED-allcnn-c} # the variants whose throughput step 1b measures again graphed ('*': all 12)
PROBE=${PROBE:-"--model allcnn-c --procs 1 4"}
INIT_PROBE=${INIT_PROBE-}   # scripts/init_probe.py options (step 3); empty: skip
SUBSET=${SUBSET:-}  # N images per class and split (tiny CPU tests); empty: all 60,000
EXTRA=${EXTRA:-}    # more run_all options (tiny CPU tests: --epochs, --batch-size, --eval-every)
SRC=${SRC:-}
if [ -z "$SRC" ]; then
  for f in data-src/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do [ -f "$f" ] && SRC=$f && break; done
fi
[ -n "$SRC" ] || { echo "campaign: no CIFAR-10 source (copy cifar10-jpeg.tar.gz to data-src/ or set SRC)" >&2; exit 2; }
[[ $TOTAL =~ ^[0-9]+$ && $RESERVE =~ ^[0-9]+$ ]] \
  || { echo "campaign: TOTAL and RESERVE are whole seconds, got TOTAL=$TOTAL RESERVE=$RESERVE" >&2; exit 2; }
[ "$TOTAL" -le 570 ] || { echo "campaign: TOTAL=$TOTAL is over 570 s: a device call runs at most 600 s, 30 of" \
  "them the margin" >&2; exit 2; }
[ "$RESERVE" -ge "$TAIL" ] || { echo "campaign: RESERVE=$RESERVE is under the $TAIL s that may run after training" \
  "(the header's arithmetic)" >&2; exit 2; }
mkdir -p "$OUT" "$WORK/results/runs" "$WORK/results/checkpoints"
log="$OUT/campaign.txt"
start=$SECONDS
{
  echo "# scripts/campaign.sh $(date -u +%FT%TZ)"
  echo "# DEVICE=$DEVICE TOTAL=$TOTAL RESERVE=$RESERVE LEDGER=$LEDGER ORDER=$ORDER LRS=$LRS PARALLEL=$PARALLEL"
  echo "# FUSED=$FUSED FUSE=$FUSE GRAPHS=$GRAPHS GRAPHED=$GRAPHED THROUGHPUT=$THROUGHPUT INIT_PROBE=$INIT_PROBE"
  [ -f "$decided" ] && echo "# $decided (an earlier call on this machine): $(tr '\n' ' ' < "$decided")"
  echo "# SRC=$SRC SUBSET=$SUBSET EXTRA=$EXTRA"
  git log -1 --format='# commit %H %s (as the device copy says; it was stale on 2026-11-27)' 2>/dev/null || true
  echo "# CODE=${CODE:-unset} (the commit the caller says this tree is: CODE=\$(git rev-parse HEAD), filled in)"
  timeout 60 "$PY" -c "from bench.results import code_sha256; print('# code_sha256', code_sha256(), '(the training \
code of this tree, as its records name it: README, Citing)')"
  timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null \
    || echo "# no nvidia-smi"
  timeout 60 "$PY" -c "import torch, sys, accelerate; print('# python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'accelerate', \
accelerate.__version__)"
} > "$log" 2>&1
left() { echo $((TOTAL - RESERVE - (SECONDS - start))); }
upto() { local l; l=$(left); l=$(( l < $1 ? l : $1 )); echo $(( l > 1 ? l : 1 )); }  # upto N: N seconds, or
# what is left if less, and at least 1 (`timeout 0` would mean no limit at all)

# the committed ledger first; a warm machine's newer files (same names) are kept
for sub in runs checkpoints; do
  [ -d "$LEDGER/$sub" ] && cp -n "$LEDGER/$sub"/* "$WORK/results/$sub/" 2>/dev/null
done
echo "# continuing: $(ls "$WORK/results/runs" | grep -c '\.json$') records, \
$(ls "$WORK/results/checkpoints" | grep -c '\.pt$') checkpoints" >> "$log"

archived=  # the records' listing when $OUT/ledger.tar.gz was last written (or tried)
archive() {  # $OUT/ledger.tar.gz: the records as they are now, when they changed; replaced whole or not at all
  local now
  now=$(ls -l --full-time "$WORK/results/runs" 2>&1)
  [ "$now" = "$archived" ] && return 0
  archived=$now
  timeout 5 tar -czf "$OUT/ledger.tar.gz.part" -C "$WORK/results" runs >> "$log" 2>&1 \
    && mv -f "$OUT/ledger.tar.gz.part" "$OUT/ledger.tar.gz"
  rm -f "$OUT/ledger.tar.gz.part"
}

step() {  # step LIMIT CMD...: logged, under timeout; returns the command's exit status
  echo "\$ timeout $1 ${*:2}" >> "$log"
  local t0=$SECONDS rc
  timeout -k "$KILL_AFTER" "$@" >> "$log" 2>&1
  rc=$?
  echo "# exit $rc after $((SECONDS - t0)) s" >> "$log"
  return $rc
}

gate() {  # gate FILE: FILE's GPU tests, alone; 0: all passed here (none failed, errored or skipped), 1: not,
  local from rc  # 2: unfinished (timed out: nothing was learnt)
  from=$(($(wc -l < "$log") + 1))
  step "$(upto 120)" env ALLCONV_TEST_TARBALL="$SRC" "$PY" -m pytest -q -rA -m gpu -p no:cacheprovider "$1"
  rc=$?
  { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && return 2
  tail -n +"$from" "$log" > "$WORK/gate.txt"  # -rA's summary: PASSED/FAILED/ERROR/SKIPPED lines naming FILE
  grep -q "^PASSED $1::" "$WORK/gate.txt" && ! grep -qE "^(FAILED|ERROR|SKIPPED).*$1" "$WORK/gate.txt"
}

decide() {  # decide KEY: keep KEY's measured value in $decided for a later call on this machine
  { grep -v "^$1=" "$decided" 2>/dev/null; echo "$1=${!1}"; } > "$decided.new" && mv "$decided.new" "$decided"
}
for k in GRAPHS FUSE PARALLEL; do  # a switch the caller set holds for a later call too (it measured nothing, and a
  [[ ${!k} =~ ^[0-9]+$ ]] && decide "$k"  # later call without it would otherwise spend minutes measuring it)
done

# shellcheck disable=SC2086  # word splitting of the option strings is wanted throughout
# at most 150 s: 28 s without --fused on 2026-11-27, and the fused groups (new shapes to tune) not yet timed on a GPU;
# the JSON is rewritten after every row, so a cut-short run keeps what it measured (All-CNN-C comes last)
[ -n "$THROUGHPUT" ] && step "$(upto 150)" "$PY" bench/throughput.py --device "$DEVICE" --precision bf16 \
  $THROUGHPUT ${FUSED:+--fused $FUSED} --json "$OUT/throughput.json"

# once, before any run_all: concurrent run_all processes must not prepare the same folder at the same time
step "$(upto 120)" "$PY" -m loaders.prepare --source "$SRC" --data-dir "$WORK/data" \
  ${SUBSET:+--subset-per-class $SUBSET} || { echo "# stopping: prepare failed" >> "$log"; ORDER=; }

if [ "$GRAPHS" = auto ]; then  # the graphed step must match eager here before any result depends on it
  gate tests/test_graphs.py
  rc=$?
  GRAPHS=$([ "$rc" = 0 ] && echo 1 || echo 0)
  [ "$rc" != 2 ] && decide GRAPHS
  echo "# GRAPHS=$GRAPHS (1: tests/test_graphs.py's GPU tests passed here, so training uses --cuda-graphs)" >> "$log"
fi
read -ra graphed_models <<< "$GRAPHED"  # as words, never as file names ('*')
# shellcheck disable=SC2086
[ "$GRAPHS" = 1 ] && [ -n "$THROUGHPUT" ] && [ -n "$GRAPHED" ] && step "$(upto 60)" "$PY" bench/throughput.py \
  --device "$DEVICE" --precision bf16 $THROUGHPUT --models "${graphed_models[@]}" --cuda-graphs \
  ${FUSED:+--fused $FUSED} --json "$OUT/throughput-graphs.json"
graphed=()
[ "$GRAPHS" = 1 ] && graphed=(--cuda-graphs)

if [ "$FUSE" = auto ]; then  # fused runs must match separate ones here, and pay, before any result depends on them
  FUSE=0
  measured="$OUT/throughput$([ "$GRAPHS" = 1 ] && echo -graphs).json"  # as training will run: graphed or not
  pays=$([ -f "$measured" ] && "$PY" - "$measured" 2>> "$log" <<'EOF'
import json, sys  # the fused All-CNN-C group against its separate step; nothing when step 1 did not get that far
rows = [r for r in json.load(open(sys.argv[1])) if r["model"] == "allcnn-c" and r.get("fused_over_separate")]
print(int(rows[0]["fused_over_separate"] >= 1.25) if rows else "")
EOF
)
  if [ "$pays" = 1 ]; then  # fusing pays here: it must also train as separate runs do
    gate tests/test_fused.py
    rc=$?
    [ "$rc" = 0 ] && FUSE=1
    [ "$rc" != 2 ] && decide FUSE
  elif [ "$pays" = 0 ]; then  # it does not pay: no gate to spend on it
    decide FUSE
  else
    echo "# no fused All-CNN-C row in $measured (its step cut short?): FUSE=0 for this call, nothing decided" >> "$log"
  fi
  echo "# FUSE=$FUSE (1: the fused group passed its GPU test and trained >= 1.25x the images/s of separate runs)" \
    >> "$log"
fi
fused=()
if [ "$FUSE" = 1 ]; then
  fused=(--fuse-lrs)
  PARALLEL=1
  echo "# PARALLEL=1 (FUSE=1: one process trains each model's LRs as one group; several would split it)" >> "$log"
fi

if [ "$PARALLEL" = auto ]; then
  PARALLEL=1
  # shellcheck disable=SC2086
  step "$(upto 120)" "$PY" scripts/concurrency_probe.py --device "$DEVICE" $PROBE "${graphed[@]}" \
    --json "$OUT/concurrency.json" \
    && PARALLEL=$("$PY" - "$OUT/concurrency.json" <<'EOF'
import json, sys
rows = sorted(json.load(open(sys.argv[1])), key=lambda r: r["processes"])
one, best = rows[0], max(rows, key=lambda r: r["images_per_s"])
print(best["processes"] if one["processes"] == 1 and best["images_per_s"] >= 1.25 * one["images_per_s"] else 1)
EOF
) && decide PARALLEL
  PARALLEL=${PARALLEL:-1}
  echo "# PARALLEL=$PARALLEL (more than 1 only when the probe measured >= 1.25x the images/s in all)" >> "$log"
fi

if [ -n "$INIT_PROBE" ]; then  # issue 10: how soon each init leaves chance (a few epochs; empty: skip)
  limit=$(upto 150)
  echo "\$ timeout $limit scripts/init_probe.py $INIT_PROBE  # output: init-probe.txt" >> "$log"
  t0=$SECONDS
  # shellcheck disable=SC2086
  timeout -k "$KILL_AFTER" "$limit" "$PY" -u scripts/init_probe.py $INIT_PROBE --source "$SRC" --data-dir "$WORK/data" \
    --out "$WORK/init-probe" --backend tensor ${SUBSET:+--subset-per-class $SUBSET} "${graphed[@]}" \
    > "$OUT/init-probe.txt" 2>&1
  echo "# exit $? after $((SECONDS - t0)) s" >> "$log"
fi

failed() {  # failed MODEL SINCE: how many records of MODEL in the work ledger failed at or after SINCE (ISO UTC,
  # the records' finished_at): an earlier call's failed record stays until its retrained run replaces it, which
  # another worker may still be doing
  timeout 10 "$PY" - "$WORK/results" "$1" "$2" <<'EOF'
import sys
from bench import results
print(sum(r["model"] == sys.argv[2] and r["status"] == "failed" and str(r["finished_at"]) >= sys.argv[3]
          for r in results.read_records(sys.argv[1])))
EOF
}

stop="$WORK/stop"  # the number of a worker that saw a failure: the others SIGTERM their run_all, start no other
rm -f "$stop"
# worker I: the models of $ORDER one after the other, each a run_all sharing the ledger with the other workers
# (claims: each run is trained by one; step 4 above)
worker() {
  local model limit rc n t0 since cmd halted
  for model in $ORDER; do
    [ -e "$stop" ] && return 0
    limit=$(left)
    if [ "$limit" -lt 30 ]; then echo "# worker $1: time budget spent before $model" >> "$log"; return 0; fi
    # shellcheck disable=SC2206
    cmd=("$PY" bench/run_all.py --preset paper --models "$model" --lrs $LRS --backend tensor --source "$SRC"
         --data-dir "$WORK/data" --out "$WORK/results" --checkpoint-minutes "$CHECKPOINT_MINUTES"
         ${SUBSET:+--subset-per-class $SUBSET} "${graphed[@]}" "${fused[@]}" $EXTRA)
    echo "\$ timeout $limit ${cmd[*]}  # worker $1 of $PARALLEL, sharing the ledger" >> "$log"
    t0=$SECONDS since=$(date -u +%FT%T+00:00) halted=
    # when another worker failed: SIGTERM to %%, this worker's own timeout (bash skips a job it reaped: never a reused
    # PID), which passes it on to run_all (it checkpoints) and SIGKILLs it KILL_AFTER later, as at its limit
    timeout -k "$KILL_AFTER" "$limit" "${cmd[@]}" >> "$log" 2>&1 &
    while [ -n "$(jobs -rp)" ]; do
      [ -z "$halted" ] && [ -e "$stop" ] && kill -TERM %% 2>/dev/null && halted=1; sleep "$POLL"
    done
    wait $!; rc=$?
    echo "# worker $1: $model exit $rc after $((SECONDS - t0)) s" >> "$log"
    [ -n "$halted" ] && { echo "# worker $1: stopped (worker $(cat "$stop") failed)" >> "$log"; return 0; }
    # time is up: the runs in progress checkpointed on SIGTERM (137: SIGKILLed KILL_AFTER later; before the limit,
    # 137 is a failure, e.g. the kernel's out-of-memory killer)
    { [ "$rc" = 124 ] || { [ "$rc" = 137 ] && [ $((SECONDS - t0)) -ge "$limit" ]; }; } && return 0
    n=$(failed "$model" "$since")
    if [ "$rc" != 0 ] || [ "$n" != 0 ]; then
      echo "# stopping: worker $1 exit $rc, $n failed runs of $model" >> "$log"; echo "$1" > "$stop"; return 0
    fi
  done
}
for i in $(seq "$PARALLEL"); do worker "$i" & done
while [ -n "$(jobs -rp)" ]; do sleep "$POLL"; archive; done  # each record reaches $OUT as soon as it is written
wait

archive
# the summary; and a finished run's checkpoint (copied in from the committed ledger) is stale: only the checkpoints
# of runs still to train stay (none recorded, or recorded failed or stalled: run_all resumes those from them)
timeout 5 "$PY" - "$WORK/results" >> "$log" 2>&1 <<'EOF'
import sys
from pathlib import Path
from bench import results, workqueue
from bench.ablations import arm_label
n = lambda v: "-" if v is None else f"{v:.0f}"  # a failed or early-diverged run has no timings
for r in results.read_records(sys.argv[1]):  # seed and arm: what tells apart the runs of one model and LR
    print(f"# {r['display_name']} lr={r['lr']} seed={r['seed']}{arm_label(r['config'])} {r['status']}: "
          f"test error {r['test_error_pct']}% after "
          f"{r['epochs_completed']} epochs, {n(r['wall_time_s'])} s, train {n(r['train_images_per_s'])} img/s, "
          f"eval {n(r['eval_images_per_s'])} img/s, {r['device_name']}, precision {r['precision']}")
    if workqueue.final(sys.argv[1], r):
        (Path(sys.argv[1]) / "checkpoints" / f"{r['run_key']}.pt").unlink(missing_ok=True)
EOF
for ckpt in "$WORK/results/checkpoints"/*.pt; do  # ~10 MB each, compressed or not: one file each, as two or
  [ -e "$ckpt" ] || continue                     # more in one archive would pass the 16 MiB a file may have
  if [ "$(find "$OUT" -maxdepth 1 -type f | wc -l)" -lt 8 ]; then  # and at most 8 files come back
    cp "$ckpt" "$OUT/"
  else
    echo "# not returned (8 files in OUT already): $(basename "$ckpt"), kept in $WORK on this machine" >> "$log"
  fi
done
echo "# done in $((SECONDS - start)) s; in OUT: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$log"
cat "$log"
