"""The schema of a results-ledger record (bench/results.py writes and reads them), declared once, and its check.

    from bench.schema import validate
    validate(record)   # None, or why the record is not one

Fields of a record (`FIELDS` declares their types; units in names; None where a value does not apply or was not
measured; fields in `OPTIONAL` are newer than some ledgers: a reader treats a missing one as None; every number
lies in `RANGES`, a percentage in [0, 100], any other >= 0, a measured one at most 1e12; no string holds a lone
surrogate):
  run_key            str   hash of the resolved per-run config (`bench.results.run_key`); the file name
  status             str   "completed" | "diverged" (loss not finite) | "stalled" (opt-in early stop
                           of a run stuck at chance; trained again on rerun, like "failed") | "failed"
  error              str   why it diverged, stalled or failed, else None
  model, display_name, family, variant       allconv name ("allcnn-c"), paper name, "A".."C", Table 2 kind
  lr, seed, epochs, epochs_completed
  preset             str   the preset the run's config started from ("paper", "smoke")
  bn, dropout, final_relu, init, optimizer, weight_decay, momentum, batch_size, augment, preprocess,
  train_split ("train" | "train45k"), val_split ("val5k" | None), precision ("no" | "bf16" | "fp16"),
  backend ("ffcv" | "torch" | "tensor"), mode ("ddp" | "grid"), channels_last, compile, cuda_graphs
  test_error_pct         final test error, %
  best_test_error_pct, best_epoch   lowest test error over the evaluated epochs and its epoch
  val_error_pct          final validation error (when val_split), %
  params, macs           exact trainable parameters; forward MACs per image
  train_images_per_s     steady-state training throughput (no evaluation, no first epoch / warm-up), all ranks
  eval_images_per_s      evaluation throughput, all ranks
  wall_time_s, peak_memory_mb   (a fused run's: its group's, which trained all its runs at once)
  device_name, device_count, world_size
  versions               {"python", "torch", "accelerate", "ffcv"}, since 2026-12-05 also "numpy", "pillow",
                         "cuda", "cudnn" (null off CUDA); a missing package is null
  git_commit, git_dirty
  code_sha256            digest of the training code's files (bench.results.code_sha256: right where git_commit is
                         not, in a copy whose .git is stale); absent in older records
  data                   {"source", "source_sha256", "encoding", "manifest_sha256", "arrays_sha256", "num_train",
                         "num_test"} (encoding: how the source stores its images, loaders.images.encoding; null
                         or absent in older records; arrays_sha256: loaders.manifest.arrays_sha256, the same for
                         the same decoded pixels and labels, absent in older records)
  config                 the whole resolved per-run config (dict), enough to rerun it: names, numbers, booleans,
                         and lists of them in `CONFIG_LISTS` only (lr_drops)
  started_at, finished_at  ISO 8601 UTC: when the run's training began (its first session's start when
                         `sessions` knows it, else the start of the session that finished it) and ended
  sessions               optional (older records lack it): one object per process session that trained part of the
                         run, in order (bench.runs.session makes one; a resumed checkpoint carries the earlier ones):
                         from_epoch (1-based, as history's `epoch`: the first epoch it trained, in part when the
                         session before it stopped mid-epoch, so two may share it), started_at, git_commit,
                         git_dirty, code_sha256, device_name, versions, mode, world_size, and the `SESSION_FLAGS`
                         config fields that change how training ran but not the run key. The record's own
                         git_commit, git_dirty, code_sha256, device_name, versions, mode and those config fields are
                         the last session's. A session resumed from a checkpoint written before sessions were kept
                         starts the list with an entry of from_epoch 1 and every other field null (earlier sessions
                         unknown). `valid_sessions` checks them.
  (which ablation arm a run belongs to is derived from its config: reports.tables.ablation_runs)
  history                list of per-epoch dicts: epoch (1-based), loss, train_acc_pct, test_error_pct,
                         val_error_pct, lr, seconds; since 2026-12-05 also test_loss and val_loss (the mean
                         cross-entropy where evaluated, else null; an epoch of an older run lacks them)
  grid                   {"models": [...], "lrs": [...], "seeds": [...]}: the grid the command was launched with
  eval_precision         "no" (fp32) | "bf16" | "fp16": the autocast used for evaluation
  fused_runs             how many runs trained in lockstep as one model, this one included (--fuse-lrs;
                         bench/fused_train.py): 1 alone; train_images_per_s is then this run's share
  diagnosis              {"train_error_pct", "test_error_by_class_pct": [10], "dead_relu_channels": {layer: [dead,
                         channels]}} of the network when the run ended (bench/diagnose.py), None when not measured
"""
from __future__ import annotations

import json
import math

STATUSES = ("completed", "diverged", "stalled", "failed")
PRECISIONS = ("no", "bf16", "fp16")  # Accelerate's names ("no" is fp32)

_NUM, _OPT_NUM, _OPT_STR, _OPT_INT = (int, float), (int, float, type(None)), (str, type(None)), (int, type(None))
FIELDS: dict[str, tuple[type, ...]] = {
    "run_key": (str,), "status": (str,), "error": _OPT_STR,
    "model": (str,), "display_name": (str,), "family": (str,), "variant": (str,),
    "lr": _NUM, "seed": (int,), "epochs": (int,), "epochs_completed": (int,), "preset": (str,),
    "bn": (bool,), "dropout": (bool,), "final_relu": (bool,), "init": (str,), "optimizer": (str,),
    "weight_decay": _NUM, "momentum": _NUM, "batch_size": (int,), "augment": (str,), "preprocess": (str,),
    "train_split": (str,), "val_split": _OPT_STR, "precision": (str,), "backend": (str,), "mode": (str,),
    "channels_last": (bool,), "compile": (bool,), "cuda_graphs": (bool,),
    "test_error_pct": _OPT_NUM, "best_test_error_pct": _OPT_NUM, "best_epoch": _OPT_INT, "val_error_pct": _OPT_NUM,
    "params": _OPT_INT, "macs": _OPT_INT, "train_images_per_s": _OPT_NUM, "eval_images_per_s": _OPT_NUM,
    "wall_time_s": _OPT_NUM, "peak_memory_mb": _OPT_NUM,
    "device_name": _OPT_STR, "device_count": (int,), "world_size": (int,),
    "versions": (dict,), "git_commit": _OPT_STR, "git_dirty": (bool,), "data": (dict,), "config": (dict,),
    "started_at": (str,), "finished_at": (str,), "history": (list,),
    "grid": (dict, type(None)), "eval_precision": _OPT_STR, "fused_runs": (int,),
    "diagnosis": (dict, type(None)), "sessions": (list,), "code_sha256": _OPT_STR,
}
"""The record schema, declared once: field name -> allowed types (bool is never accepted as a number)."""
OPTIONAL = ("grid", "eval_precision", "cuda_graphs", "fused_runs", "diagnosis", "sessions", "code_sha256")
"""Fields newer than some ledgers: a record may lack them (readers treat them as None)."""
VALUES = {"status": STATUSES, "precision": PRECISIONS, "eval_precision": (*PRECISIONS, None)}
_PCT, _SIZE, _COUNT, _POS = (0, 100), (0, 1e12), (1, 1e12), (0, math.inf)
RANGES = {**dict.fromkeys(("test_error_pct", "best_test_error_pct", "val_error_pct"), _PCT),
          **dict.fromkeys(("best_epoch", "device_count", "world_size", "fused_runs"), _COUNT),
          **dict.fromkeys(("epochs_completed", "params", "macs", "train_images_per_s", "eval_images_per_s",
                           "wall_time_s", "peak_memory_mb"), _SIZE),
          "lr": _POS, "weight_decay": _POS, "momentum": _POS, "epochs": (1, 2 ** 63), "batch_size": (1, 2 ** 63),
          "seed": (0, 2 ** 64)}
"""Where a number field lies, bounds included (None, where allowed, is not checked), finite: a percentage in
[0, 100]; a measured one >= 0 (a count of devices or runs >= 1) and at most 1e12, far above any real value, so that
sums and products of a few stay finite; one a command sets (bench/config.py) anywhere it may set it: >= 0, epochs
and batch size >= 1 and at most 2**63, a seed at most 2**64 (torch's). History entries: `HISTORY_RANGES`."""
HISTORY_RANGES = {"epoch": _COUNT, "loss": _POS, "test_loss": _POS, "val_loss": _POS, "lr": _POS, "seconds": _SIZE}
"""Where a history entry's numbers lie (and every *_pct key's in [0, 100]; a diverging run's loss may be 1e35);
keys of newer writers: any finite number."""
HISTORY_KEYS = ("epoch", "loss", "train_acc_pct", "test_error_pct", "val_error_pct", "lr", "seconds")
"""The keys of every history entry bench.run_state.RunState.end_epoch writes (None where not measured): a checkpoint's
entries must have them all (bench.checkpoint), as the run's record is made from them. It also writes test_loss and
val_loss, which entries of older checkpoints lack (a run resumed from one has them from then on)."""
CONFIG_LISTS = ("lr_drops",)
"""The config fields that hold a list (bench/config.py's tuple fields less its GRID_FIELDS, which no per-run config
has); every other config value is one name, number or boolean (readers hash them: bench.plan)."""

def validate(record) -> str | None:
    """None when `record` follows `FIELDS`, `VALUES`, `RANGES` and `CONFIG_LISTS` (fields not declared there are
    allowed: newer writers) and no string of it holds a lone surrogate, else why not."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, this is a {type(record).__name__}"
    try:  # a lone surrogate ("\\ud800") reads as JSON, but no file or terminal can be written with it
        json.dumps(record, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError as e:
        return f"a string holds a lone surrogate ({e.object[e.start:e.end]!r})"
    except RecursionError:
        return "nested too deep"
    for name, types in FIELDS.items():
        if name not in record:
            if name in OPTIONAL:
                continue
            return f"field {name!r} is missing"
        value = record[name]
        if not _typed(value, types):
            return f"field {name!r} is {type(value).__name__} {value!r:.40}, expected " + \
                " or ".join("null" if t is type(None) else t.__name__ for t in types)
        if name in VALUES and value not in VALUES[name]:
            return f"field {name!r} is {value!r:.40}, expected one of {VALUES[name]}"
        if name in RANGES and value is not None and not _within(value, RANGES[name]):
            return f"field {name!r} is {value!r:.40}, out of range {list(RANGES[name])}"
    if not valid_history(record["history"]):
        return "field 'history' must be a list of objects of numbers in range (HISTORY_RANGES)"
    if not _grid_ok(record.get("grid") or {}):
        return "field 'grid' must hold lists: models of names, lrs of numbers >= 0, seeds of integers >= 0"
    if record.get("diagnosis") is not None and not _diagnosis_ok(record["diagnosis"]):
        return "field 'diagnosis' must hold train_error_pct, test_error_by_class_pct and dead_relu_channels as " \
            "bench/diagnose.py writes them"
    if "sessions" in record and not valid_sessions(record["sessions"], record["epochs_completed"] + 1):
        return f"field 'sessions' must be 1 to {MAX_SESSIONS} objects as bench.runs.session writes them, " \
            "from_epoch non-decreasing and at most epochs_completed + 1"
    config = record["config"]
    for name in CONFIG_REQUIRED:
        if name not in config:
            return f"config has no {name!r}"
        if config[name] != record[name]:
            return f"config says {name} {config[name]!r:.40}, the record {record[name]!r:.40}"
    for name, v in config.items():
        if not (_scalar(v) or name in CONFIG_LISTS and isinstance(v, (list, tuple)) and all(map(_scalar, v))):
            return f"config values must be names, numbers or booleans (lists of them: {', '.join(CONFIG_LISTS)}), " \
                f"{name!r} is {v!r:.40}"
    return None


CONFIG_REQUIRED = ("model", "lr", "seed", "epochs", "preset", "train_split", "augment")
"""Config fields every record has had, each also a field of the record itself (the two must agree), that the
reports select and compare runs by."""


SESSION_FLAGS = ("backend", "channels_last", "compile", "cuda_graphs", "deterministic", "fuse_lrs")
"""The config fields of bench/config.py's NOT_IN_KEY a session records: those that change how its epochs trained
(loader, memory layout, kernels, lockstep fusing as configured), not where output went or how it was shown."""
SESSION_TYPES = {"from_epoch": (int,), "started_at": _OPT_STR, "git_commit": _OPT_STR,
                 "git_dirty": (bool, type(None)), "code_sha256": _OPT_STR, "device_name": _OPT_STR,
                 "versions": (dict, type(None)), "mode": _OPT_STR, "world_size": _OPT_INT,
                 "backend": _OPT_STR, **dict.fromkeys(SESSION_FLAGS[1:], (bool, type(None)))}
"""A session's fields and their types (every one present; a newer writer's other keys hold a name, number, boolean
or null)."""
MAX_SESSIONS, MAX_SESSION_STR = 1000, 200
"""At most this many sessions per run, each string (a versions value included) at most this long."""


def valid_sessions(sessions, last_epoch: int) -> bool:
    """`sessions` as records and checkpoints carry them (untrusted: a checkpoint's unpickler admits any str, int or
    container): a list of 1 to `MAX_SESSIONS` objects of `SESSION_TYPES`, strings at most `MAX_SESSION_STR` long,
    versions a small object of names, world_size >= 1, from_epoch 1-based, non-decreasing, at most `last_epoch`."""
    def short(v) -> bool:
        return v is None or isinstance(v, str) and len(v) <= MAX_SESSION_STR

    def value(v, types) -> bool:  # a newer writer's key: a name, number, boolean or null
        return _typed(v, types) and short(v if isinstance(v, str) else None) and (
            not _number(v) or _within(v, (-2 ** 63, 2 ** 63)))

    def entry(s) -> bool:
        if not isinstance(s, dict) or not set(SESSION_TYPES) <= set(s) or not all(isinstance(k, str) for k in s):
            return False
        if not all(value(v, SESSION_TYPES.get(k, (str, int, float, bool, type(None)))) for k, v in s.items()):
            return False
        versions = s["versions"]
        return (versions is None or len(versions) <= 16 and all(short(k) and k is not None and short(v)
                                                                 for k, v in versions.items())) \
            and (s["world_size"] is None or s["world_size"] >= 1)

    if not isinstance(sessions, list) or not 1 <= len(sessions) <= MAX_SESSIONS or not all(map(entry, sessions)):
        return False
    epochs = [s["from_epoch"] for s in sessions]
    return all(1 <= e <= last_epoch for e in epochs) and epochs == sorted(epochs)


def _diagnosis_ok(d) -> bool:
    """bench/diagnose.py's shape: a percentage, a list of percentages or nulls (a class without test images), and
    per layer [dead, channels] as two integers, 0 <= dead <= channels <= 1e12."""
    layers = d.get("dead_relu_channels") if isinstance(d, dict) else None
    return isinstance(d, dict) and _within(d.get("train_error_pct"), _PCT) \
        and isinstance(d.get("test_error_by_class_pct"), list) \
        and all(_within(v, _PCT) or v is None for v in d["test_error_by_class_pct"]) and isinstance(layers, dict) \
        and all(isinstance(v, list) and len(v) == 2 and all(type(n) is int for n in v) and 0 <= v[0] <= v[1] <= 1e12
                for v in layers.values())


def valid_history(history) -> bool:
    """A run's history as records and checkpoints hold it: a list of objects whose keys are names and whose values
    are finite numbers of a sane size or null (a record's JSON reader refuses the others already; a checkpoint's
    unpickler does not), those of `HISTORY_RANGES` and every *_pct in their range."""
    def value(k, v) -> bool:
        bounds = _PCT if k.endswith("_pct") else HISTORY_RANGES.get(k)
        return v is None or (isinstance(v, float) and math.isfinite(v) or type(v) is int and abs(v) < 2 ** 63) \
            and (bounds is None or _within(v, bounds))

    return isinstance(history, list) and all(isinstance(h, dict) and all(isinstance(k, str) and value(k, v)
                                                                         for k, v in h.items()) for h in history)


def _grid_ok(grid) -> bool:
    """run_all's `grid`: models are names, lrs numbers, seeds integers (in their fields' `RANGES`); a key it does
    not write holds names or numbers (a newer writer's)."""
    item_ok = {"models": lambda x: isinstance(x, str), "lrs": lambda x: _within(x, RANGES["lr"]),
               "seeds": lambda x: type(x) is int and _within(x, RANGES["seed"])}
    return isinstance(grid, dict) and all(
        isinstance(v, list) and all(item_ok.get(k, lambda x: isinstance(x, str) or _number(x))(x) for x in v)
        for k, v in grid.items())


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def in_range(name: str, value) -> bool:
    """Whether `value` is a finite number (no bool) in `RANGES[name]`, bounds included."""
    return _within(value, RANGES[name])


def _typed(x, types: tuple) -> bool:
    """`x` is of one of `types`, a bool only where bool is one of them (bool is never accepted as a number)."""
    return isinstance(x, types) and (bool in types or not isinstance(x, bool))


def _within(x, bounds: tuple) -> bool:
    return _number(x) and (isinstance(x, int) or math.isfinite(x)) and bounds[0] <= x <= bounds[1]


def _scalar(x) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


def utf8(x):
    """`x` (a record or a part of one) with every string writable as UTF-8: a lone surrogate, which Python makes of
    a path's byte that is not UTF-8 (os.fsdecode's surrogateescape) or reads from a JSON escape ("\\ud800"), becomes
    its escape in text ("caf\\xe9", "\\ud800"). bench.results applies it to what it writes and reads, so such a path
    neither stops a record from being written nor sets an old record aside."""
    if isinstance(x, str):
        try:
            x.encode()
            return x
        except UnicodeEncodeError:
            try:
                return x.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:  # a surrogate no byte was escaped to
                return x.encode("utf-8", "backslashreplace").decode()
    if isinstance(x, dict):
        return {utf8(k): utf8(v) for k, v in x.items()}
    if isinstance(x, list):
        return [utf8(v) for v in x]
    return x
