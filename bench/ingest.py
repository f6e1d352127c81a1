"""What a campaign call brought back (scripts/campaign.sh's $OUT, as the device tool lays it out under its files_at)
into the committed ledger, so that the next campaign continues from it and the reports read it:

    python -m bench.ingest FOLDER --name 2026-12-06-h100 [--ledger reports/measured/campaign] [--dry-run]

- ledger.tar.gz: each `runs/<run key>.json` that is a valid record of its run (bench.results' checks,
  `workqueue.not_its_run`, `workqueue.unlike_its_status`) goes into LEDGER/runs/ unless the ledger's own record of
  that run is final (completed or diverged: a finished run is never replaced; one with other bytes is named). A
  failed or stalled record, which run_all trains again, is replaced. The archive is read in memory, never extracted:
  a link, another path, a damaged record or one archived twice differently is named in a warning and left out;
  an archive that cannot be read whole (truncated, corrupt, a damaged header, over `MAX_UNPACKED` bytes unpacked)
  is a one-line error, nothing ingested.
- `<run key>.pt`: a checkpoint `bench.checkpoint.progress` reads, of a run with no final record, goes into
  LEDGER/checkpoints/ unless the ledger's checkpoint of that run is further on (a folder ingested twice, or out of
  order). A damaged one is named and left out (the ledger keeps its own).
- Every checkpoint in LEDGER/checkpoints/ of a run that now has a final record is deleted: its run is over.
- campaign.txt goes to LEDGER/logs/NAME.txt, init-probe.txt to LEDGER/logs/init-probe-NAME.txt and each JSON the
  script writes (throughput.json, throughput-graphs.json, concurrency.json) to LEDGER/<stem>-NAME.json. These are
  never overwritten: a NAME already used is a one-line error before anything is written, as is a LEDGER that is
  not a folder or a file where it needs one (logs/, checkpoints/).
Nothing in FOLDER is executed; every file is read as a regular file of bounded size (bench.files.read_regular), and
a link is named and left out (it could carry any file of this machine into the commit).
It prints one line per change, then the commands that remake the report and the README's table.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import io
import json
import os
import re
import sys
import tarfile
import zlib
from pathlib import Path

from bench import checkpoint, results, workqueue
from bench.ablations import arm_label
from bench.cli import Parser, UsageError
from bench.files import atomic_write, read_regular, set_aside

MAX_FILE = 64 * 2 ** 20
"""The largest file read from FOLDER: the device tool returns files of at most 16 MiB."""
MAX_UNPACKED = 512 * 2 ** 20
"""The most ledger.tar.gz may unpack to: a record is ~100 kB, the paper grid's 48 runs and its ablations a few MB."""
KEY = r"[0-9a-f]{16}"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LOGS = {"campaign.txt": "logs/{name}.txt", "init-probe.txt": "logs/init-probe-{name}.txt",
        "throughput.json": "throughput-{name}.json", "throughput-graphs.json": "throughput-graphs-{name}.json",
        "concurrency.json": "concurrency-{name}.json"}
"""What campaign.sh writes to $OUT besides the records and checkpoints, and where each goes in the ledger."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def archived_records(path: Path) -> dict[str, bytes]:
    """{run key: bytes} of ledger.tar.gz's runs/<key>.json files that are valid records of their runs. (tarfile
    reads GNU long-name and PAX headers by recursing: a run of thousands raises RecursionError.)"""
    try:
        with gzip.open(io.BytesIO(read_regular(path, MAX_FILE))) as z:
            data = z.read(MAX_UNPACKED + 1)
        if len(data) > MAX_UNPACKED:
            raise ValueError(f"it unpacks to over {MAX_UNPACKED >> 20} MiB")
        members = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        found = [(m, members.extractfile(m).read() if m.isreg() else None) for m in members]
        if data[members.offset:].strip(b"\0"):  # tarfile ends its listing at a damaged header, silently
            raise ValueError(f"a damaged header at byte {members.offset}, after {len(found)} members")
    except (OSError, ValueError, EOFError, zlib.error, tarfile.TarError, RecursionError) as e:
        raise UsageError(f"{path} is not a readable ledger archive ({e}): nothing ingested") from None
    out, first, twice = {}, {}, set()
    for member, blob in found:
        match = re.fullmatch(rf"(?:\./)?runs/({KEY})\.json", member.name)
        if not match or blob is None:
            if not member.isdir():
                warn(f"{path}: {member.name!r} left out (not a file runs/<run key>.json)")
            continue
        if first.setdefault(match[1], blob) != blob:  # which one is the run's? tar would take the last
            twice.add(match[1])
            continue
        record, why = results.parse(Path(member.name), blob)
        why = why or workqueue.not_its_run(record, match[1]) or workqueue.unlike_its_status(record)
        if why:
            warn(f"{path}: {member.name} left out: {why}")
        else:
            out[match[1]] = blob
    for key in sorted(twice):
        warn(f"{path}: runs/{key}.json is archived twice, differently: left out")
        out.pop(key, None)
    return out


def epoch_of(path: Path) -> int | None:
    """A checkpoint's epochs done, or None (named in a warning) when run_all would set it aside."""
    try:
        return checkpoint.progress(path)["epoch"]
    except ValueError as e:
        warn(f"{path}: {e}")
        return None


def ingest(folder: Path, ledger: Path, name: str, dry_run: bool = False) -> list[str]:
    """Bring `folder` into `ledger` as the module docstring says; returns the lines that say what changed. All of
    `folder` is read and checked before the first write, so bad input changes nothing."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder (give the folder the campaign's files came back in)")
    if not ledger.is_dir():  # a typo, or the default's relative path from another folder: no new ledger made there
        raise UsageError(f"{ledger} is not a folder (give --ledger the committed ledger; run from the repository root)")
    if not NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (e.g. 2026-12-06-h100)")
    links = sorted(p for p in folder.iterdir() if p.is_symlink())  # to any file of this machine: not what came back
    for link in links:
        warn(f"{link} left out (a link, not followed)")
    logs = {}  # destination: bytes, of the logs that are readable (and JSON where they should be)
    for src, dst in ((folder / src, ledger / dst.format(name=name)) for src, dst in LOGS.items()):
        try:
            if src.exists() and src not in links:
                data = read_regular(src, MAX_FILE)
                if dst.suffix == ".json":
                    json.loads(data)  # a damaged JSON would be refused by every reader of the ledger
                logs[dst] = data
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
            warn(f"{src} left out: {e}")
    taken = [str(dst) for dst, data in logs.items() if dst.exists() and dst.read_bytes() != data]
    if taken:  # the same folder ingested again under the same name finds its own files: nothing to do
        raise UsageError(f"{', '.join(taken)} already hold(s) other files: give another --name")
    archive = folder / "ledger.tar.gz"
    returned = archived_records(archive) if archive.exists() and archive not in links else {}
    runs, ckpts, changes = results.runs_dir(ledger), ledger / "checkpoints", []  # (what, path, bytes or None)

    @functools.cache  # read before any write: each ledger record once, however many returned files name it
    def final(key: str) -> bool:
        record = results.read_one(runs / f"{key}.json")[0] if (runs / f"{key}.json").exists() else None
        return record is not None and workqueue.final(ledger, record)

    finished = set()  # runs whose returned record ends them
    for key, blob in sorted(returned.items()):
        path, record = runs / f"{key}.json", json.loads(blob)
        if path.exists() and path.read_bytes() == blob:
            continue
        if final(key):
            warn(f"{archive}: runs/{key}.json differs from {path}, a finished run's record: kept the ledger's")
            continue
        finished.update([key] if record["status"] in workqueue.DONE else [])
        error = record["test_error_pct"]
        said = " ".join(f"{record['model']} lr {record['lr']:g} seed {record['seed']}{arm_label(record['config'])}"
                        .split())  # strings from outside: a newline in one would start a line of its own
        changes.append((f"record {key}: {said} {record['status']}"
                        + (f" {error:.2f}%" if error is not None else "")
                        + (" (replaces a record run_all trains again)" if path.exists() else ""), path, blob))

    def its_own(path: Path) -> bool:  # a valid record of its run: else kept aside as run_all does (workqueue._claim)
        record = results.read_one(path)[0]
        return record is not None and workqueue.not_its_run(record, path.stem) is None

    def over(key: str) -> bool:
        return key in finished or final(key)

    for src in sorted(set(folder.glob("*.pt")) - set(links)):
        dst = ckpts / src.name
        if not re.fullmatch(KEY, src.stem):
            warn(f"{src} left out (not <run key>.pt)")
        elif not over(src.stem) and (epoch := epoch_of(src)) is not None:
            before = epoch_of(dst) if dst.exists() else None
            if before is None or before < epoch:
                was = "" if not dst.exists() else " (was damaged)" if before is None else f" (was {before})"
                changes.append((f"checkpoint {src.stem}: epoch {epoch}{was}", dst,
                                read_regular(src, checkpoint.MAX_BYTES)))
            elif before > epoch:
                warn(f"{src} (epoch {epoch}) left out: {dst} is further on (epoch {before})")
    for path in sorted(ckpts.glob("*.pt")) if ckpts.is_dir() else []:
        if re.fullmatch(KEY, path.stem) and over(path.stem):
            changes.append((f"removed {path}: its run is recorded", path, None))
    changes += [(f"log {dst}", dst, data) for dst, data in logs.items() if not dst.exists()]
    for folder_of in sorted({path.parent for _, path, _ in changes}):  # before the first write: no partial result
        there = next(p for p in (folder_of, *folder_of.parents) if os.path.lexists(p))
        if not there.is_dir():
            raise UsageError(f"{there} is not a folder, so {folder_of} cannot hold files: nothing ingested")
    for other in sorted(p.name for p in folder.iterdir()):
        if other not in LOGS and other != "ledger.tar.gz" and not other.endswith(".pt") and folder / other not in links:
            warn(f"{folder / other} left out (not a file campaign.sh writes)")
    for what, path, data in [] if dry_run else changes:
        if data is None:
            path.unlink()
            continue
        if what.endswith("(was damaged)") or path.parent == runs and path.exists() and not its_own(path):
            set_aside(path)  # the ledger's damaged checkpoint, or record damaged or not its run's: kept aside
        atomic_write(path, lambda f, data=data: f.write(data))
    return [what for what, _, _ in changes]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.ingest", description="\n\n".join(__doc__.split("\n\n")[:2]),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the folder the campaign's files came back in ($OUT's copy)")
    parser.add_argument("--name", required=True, help="names its logs: <date>-<gpu>, e.g. 2026-12-06-h100")
    parser.add_argument("--ledger", type=Path, default=Path("reports/measured/campaign"),
                        help="the committed ledger (default: reports/measured/campaign)")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    try:
        args = parser.parse_args(argv)
        done = ingest(args.folder, args.ledger, args.name, args.dry_run)
    except (UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(done) if done else "nothing new", flush=True)
    if done and not args.dry_run:
        # the report's table is of the 12 variants: not throughput-graphs (GRAPHED's only); this call's, else newest
        ours = [p for p in args.ledger.glob("throughput-*.json") if not p.name.startswith("throughput-graphs-")]
        measured = sorted(ours, key=lambda p: (p.name == f"throughput-{args.name}.json", p.stat().st_mtime))[-1:]
        print(f"next: python -m reports --results {args.ledger} --out {args.ledger / 'report'}"
              + "".join(f" --throughput {p}" for p in measured) + "; python -m reports.campaign")
    return 0


if __name__ == "__main__":
    sys.exit(main())
