"""The grid's work queue: each process claims the next pending run, longest first, with a claim file in the ledger
folder, so any number of processes started at any time (one `accelerate launch`, a SLURM job array, several
machines on one shared filesystem) share one `--out` without a static split and without waiting on each other.

    for members in claimed(work_items(longest_first(pending, num_images)), out, lease_s=3600, stop=stopped):
        for run, key, claim in members: ... train, claim.heartbeat() at each epoch end, write the record ...
    # each claim is released (deleted) when the loop asks for the next run or is left (SIGTERM, a failed write)

A claim is `<out>/claims/<run_key>.json` created with O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+),
holding host, pid, the pid's start time and the claim's start time; its mtime is the owner's heartbeat. A claim is
stale when its process is gone: same host and that process no longer exists (pid dead, or reused by another
process), or another host (or a pid no process here can have, a damaged claim) and no heartbeat for `lease_s` (set
the lease above the longest epoch). Claims are judged,
taken over and created under one exclusive lock (`<out>/claims/.lock`, flock), so of many processes that find the
same stale claim exactly one takes the run. (A first version renamed the stale file and compared inodes: a freed
inode number reused by the winner's new claim let a second taker win too.) `<out>/claims/log.txt` has one line per
claim and takeover: the order in which the grid was handed out.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import allconv
from bench import files, results

HOST = socket.gethostname()
DONE = ("completed", "diverged")
"""Statuses that end a run for good; "failed" and "stalled" runs are trained again on a rerun."""


def claims_dir(out) -> Path:
    return Path(out) / "claims"


def done_keys(out) -> set[str]:
    """Run keys with a final record in the ledger (`final`)."""
    return {r["run_key"] for r in results.read_records(out) if final(out, r)}


def recorded(out, key: str) -> bool:
    """Whether `key` has a final record now (another process may have finished it since the ledger was listed)."""
    record, _ = results.read_one(results.runs_dir(out) / f"{key}.json")
    return record is not None and final(out, record)


_misnamed: set[Path] = set()


def final(out, record: dict) -> bool:
    """Whether a valid record ends its run for good: its status is one of DONE and its config hashes to its run key
    (`config.config_key`). One that does not (hand-edited, or copied under another run's key) is not that run: it
    counts as not done (the run is trained), named once on stderr and left in the ledger (the reports read it)."""
    from bench.config import config_key

    if record["status"] not in DONE:
        return False
    if config_key(record["config"]) == record["run_key"]:
        return True
    path = results.runs_dir(out) / f"{record['run_key']}.json"
    if path not in _misnamed:
        _misnamed.add(path)
        print(f"warning: ledger file {path}: its config does not hash to its run key, so it is not counted as that "
              "run (trained again)", file=sys.stderr)
    return False


def cost(run, num_images: dict) -> float:
    """A run's training work: epochs x training images x forward MACs per image (allconv.macs)."""
    return run.cfg.epochs * num_images[run.cfg.train_split] * allconv.macs(run.model)


def longest_first(pending: list, num_images: dict) -> list:
    """(run, key) pairs, the most work first (ties keep grid order): the grid ends soonest when the longest runs
    start first and the short ones fill the gaps at the end."""
    return sorted(pending, key=lambda rk: -cost(rk[0], num_images))


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this host runs (and is the one that started at `start`, when given)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # exited, not yet reaped
    except (OSError, IndexError):
        pass
    now = _pid_start(pid)
    return start is None or now is None or now == start


PID_LIMIT = 2 ** 22
"""Linux's PID_MAX_LIMIT: pid_max is at most this, so no larger pid (nor one below 1) is a process of this host."""
CLAIM_BYTES = 4096
"""The largest claim file read (this module writes ~120 bytes): a larger one is damaged."""


def claim_info(path: Path) -> dict:
    """A claim file's JSON object; {} when it holds none: not a regular file of at most `CLAIM_BYTES` holding one
    JSON object (damaged, or its owner died between create and write). A FIFO is not waited on (`files.read_regular`)."""
    try:
        info = json.loads(files.read_regular(path, CLAIM_BYTES))
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting too deep for the JSON parser
        return {}
    return info if isinstance(info, dict) else {}


def owner(info: dict) -> str:
    """'host pid N' of a claim (`claim_info`), for one line: a field other than a short name or a pid in its repr."""
    if not info:
        return "a damaged claim"
    host, pid = info.get("host"), info.get("pid")
    host = host if isinstance(host, str) and host.isprintable() and 0 < len(host) <= 255 else f"{host!r:.40}"
    return f"{host} pid {pid if type(pid) is int and 0 < pid < PID_LIMIT else f'{pid!r:.40}'}"


def stale(info: dict, mtime: float, lease_s: float) -> bool:
    """Whether a claim (its JSON and its file's mtime) belongs to a process that is gone. Judged by its process when
    it names this host, a pid that can be one here and a start time as `_pid_start` gives it; else (another host, or
    fields this module does not write) by its heartbeat."""
    pid, start = info.get("pid"), info.get("pid_start")
    here = info.get("host") == HOST and type(pid) is int and 0 < pid < PID_LIMIT
    if here and (start is None or isinstance(start, str)):
        return not alive(pid, start)
    return time.time() - mtime > lease_s


@dataclass
class Claim:
    """This process's claim on one run: the file and the exact bytes this process wrote into it (host, pid and a
    start time: no other claim has the same). `path` None: a no-op claim (the non-main ranks of a DDP run, whose
    main process holds the claim)."""
    path: Path | None
    body: bytes = b""

    def held(self) -> bool:
        """Whether this process still holds the claim (a stale one may have been taken over by another host)."""
        try:
            return self.path is not None and self.path.read_bytes() == self.body
        except OSError:
            return False

    def heartbeat(self) -> bool:
        """Refresh the claim's mtime: the owner is alive (other hosts judge it by this). False when the claim was
        taken over (this process was stopped past the lease, e.g. a suspended job): another process trains the
        run now. An unreadable claim (a filesystem hiccup) counts as still held."""
        if self.path is None:
            return True
        try:
            if self.path.read_bytes() != self.body:
                return False
            os.utime(self.path)
        except FileNotFoundError:
            return False
        except OSError:
            pass
        return True

    def release(self) -> None:
        """Delete the claim if this process still holds it; from then on a no-op claim (a run of a fused group that
        ended early is released while the group's checkpoints still heartbeat every claim it began with)."""
        if self.path is None:
            return
        try:
            with _locked(self.path.parent):  # a claim taken over meanwhile (lease expired) is the new owner's
                if self.held():
                    self.path.unlink(missing_ok=True)
        except OSError:
            pass  # folder gone or read-only: a claim left behind is stale once this process has exited
        self.path = None


def log(out, line: str) -> None:
    """Append one line to the claims log (O_APPEND: lines from many processes do not interleave)."""
    try:
        with open(claims_dir(out) / "log.txt", "a") as f:
            f.write(f"{time.time():.3f} {HOST} {os.getpid()} {line}\n")
    except OSError:
        pass  # the log is for people; a claim works without it


@contextmanager
def _locked(folder: Path):
    """Hold `<folder>/.lock` exclusively (flock; POSIX locks on NFS): only one process at a time judges and creates
    claims. The kernel drops the lock when its holder dies, so a killed process never blocks the grid."""
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def try_claim(out, key: str, lease_s: float) -> Claim | None:
    """Claim run `key` for this process, taking over a stale claim; None when a live process holds it. A claim
    that cannot be written (a full disk) raises `files.WriteError` and leaves no claim file behind (an empty one
    would hold the run for a minute as if its writer were alive)."""
    path = claims_dir(out) / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _try_claim(out, path, key, lease_s)
    except files.WriteError:
        raise
    except OSError as e:
        raise files.WriteError(e.errno, e.strerror or str(e), str(path)) from e


def _try_claim(out, path: Path, key: str, lease_s: float) -> Claim | None:
    with _locked(path.parent):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            info = claim_info(path)  # {}: damaged, or its owner died between create and write: judged by its age
            if not stale(info, st.st_mtime, lease_s if info else min(lease_s, 60)):
                return None
            path.unlink()
            log(out, f"took over {key} from {owner(info)}")
        body = json.dumps({"host": HOST, "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                           "started_at": time.time()}).encode()
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # no one else creates while we hold the lock
        try:
            os.write(fd, body)
            os.fsync(fd)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return Claim(path, body)


def work_items(ordered: list) -> list[list]:
    """The units a process claims and trains, in the order of `ordered` ((run, key) pairs): each run alone, except
    that runs under --fuse-lrs that differ only in their LR (one model, seed and config) make one item, trained in
    lockstep (bench/fused_train.py)."""
    items, where = [], {}
    for run, key in ordered:
        unit = (run.model, run.seed, run.cfg) if run.cfg.fuse_lrs else key
        if unit not in where:
            where[unit] = len(items)
            items.append([])
        items[where[unit]].append((run, key))
    return items


def claimed(items: list, out, *, lease_s: float, stop=lambda: False, acc=None, ddp: bool = False):
    """For each item of `items` (`work_items`), yield the [(run, key, claim), ...] of its runs this process claims,
    skipping runs held by a live process or recorded meanwhile, and items with none left. In DDP mode (every rank
    trains every run) the main process claims and the ranks follow its decision; `acc` is needed then."""
    from bench.engine import stop_agreed

    for item in items:
        if stop_agreed(stop, acc, ddp):  # in DDP mode a stop on any rank stops all, before the next collective
            return
        members = []
        try:
            for run, key in item:
                claim = _claim(out, key, lease_s, acc, ddp)
                if claim is not None:
                    members.append((run, key, claim))
            if members:
                yield members
        finally:  # the caller asks for the next item, or leaves the loop (SIGTERM, a failed write)
            for _, _, claim in members:
                claim.release()


def _claim(out, key: str, lease_s: float, acc, ddp: bool) -> Claim | None:
    """This process's claim on run `key`, or None (held by a live process, or recorded meanwhile)."""
    claim, error = None, None
    if not ddp or acc.is_main_process:
        try:
            claim = try_claim(out, key, lease_s)  # takes over the stale claim of an owner that died after recording
        except files.WriteError as e:
            error = e
        if claim is not None and recorded(out, key):  # finished by another process meanwhile
            claim.release()
            claim = None
        elif claim is not None:
            log(out, f"claimed {key}")
    error = agree(error, acc, ddp)  # a full disk stops every rank, not only the one that claims
    if error is not None:
        raise error
    if ddp:
        from accelerate.utils import broadcast_object_list

        take = broadcast_object_list([claim is not None])[0]
        claim = claim if acc.is_main_process else (Claim(None) if take else None)
    return claim


class ClaimLost(Exception):
    """Another process took over this one's claims on the runs `keys` it trains: it stops those runs without a
    record or checkpoint (a fused group goes on without them while any is left) and goes on to the next."""

    def __init__(self, keys: list[str]):
        super().__init__(f"{', '.join(keys)} taken over by another process while this one was stopped past the claim "
                         "lease: left to it, nothing recorded here")


class Checkpoints:
    """When to checkpoint at an epoch's end: every `minutes` of wall-clock time (0: every epoch), never after the
    last epoch (the record follows). Each epoch's end is also the heartbeat of the claims (one per run trained). In
    DDP mode the main process's clock decides for every rank (a checkpoint gathers from all ranks)."""

    def __init__(self, minutes: float, claims: list, acc=None, ddp: bool = False):
        self.interval, self.claims, self.acc, self.ddp = minutes * 60, claims, acc, ddp
        self.last = time.monotonic()

    def due(self, epochs_done: int, epochs: int, lost: list | None = None) -> bool:
        """Whether to checkpoint now; raises ClaimLost when another process has taken a claim over (before this
        process could overwrite that one's checkpoint or record). Given a list `lost` (a fused group, which goes on
        without those runs), adds their run keys to it instead, and heartbeats those claims no more."""
        taken = [claim for claim in self.claims if not claim.heartbeat()]
        keys = [claim.path.stem for claim in taken]
        due = epochs_done < epochs and time.monotonic() - self.last >= self.interval
        if self.ddp:
            from accelerate.utils import broadcast_object_list

            due, keys = broadcast_object_list([due, keys])
        if keys and lost is None:
            raise ClaimLost(keys)
        if keys:
            lost.extend(keys)
            self.claims = [claim for claim in self.claims if claim not in taken]
        if due:
            self.last = time.monotonic()
        return due


def eta_seconds(pending: list, num_images: dict, rate: float, world: int) -> float:
    """Pending training + evaluation work, scaled from the measured model (the first pending run) by forward MACs
    (an evaluation image costs about a third of a training image), spread over all processes."""
    first = allconv.macs(pending[0][0].model)
    work = sum(r.cfg.epochs * (num_images[r.cfg.train_split] + num_images["test"] / 3) * allconv.macs(r.model) / first
               for r, _ in pending)
    return work / (rate * world)


def agree(error, acc, ddp: bool):
    """The main process's write error on every rank (DDP mode), so all stop before the next collective."""
    if not ddp:
        return error
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([error])[0]


def write_failed(e: OSError) -> str:
    """The one line for a write that failed (full disk): nothing recorded as failed, nothing lost."""
    hint = "free space" if e.errno in (28, 122) else "make it writable"  # ENOSPC, EDQUOT
    return (f"error: cannot write {e.filename}: {e.strerror}; earlier records and checkpoints are intact; {hint} and "
            "rerun the same command")
