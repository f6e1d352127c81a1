"""Claim files: which process trains which run of a grid (bench/workqueue.py hands runs out with them).

A claim is `<out>/claims/<run_key>.json` created with O_CREAT|O_EXCL (atomic on local filesystems and NFSv3+),
holding host, pid, the pid's start time, the process space (`SPACE`) and the claim's start time; its mtime is the
owner's heartbeat. A claim is stale when its process is gone: same host and process space and that process no
longer exists (pid dead, or reused by another process), or another host or process space (two machines or
containers of one host name; or a pid no process here can have, a damaged claim) and no heartbeat for `lease_s`
(set the lease above the longest epoch). Claims are judged,
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
import stat
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import files

HOST = socket.gethostname()


def _space() -> str | None:
    """This boot of this machine and this pid namespace (Linux): where a pid names one process. Two machines, or
    two containers, may share a host name; their pids mean nothing to each other."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() + " " + os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


SPACE = _space()


def claims_dir(out) -> Path:
    return Path(out) / "claims"


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


DAMAGED_LEASE_S = 60
"""A claim holding no JSON object (`claim_info` {}: damaged, or its owner died between create and write) is stale
after at most this long without a heartbeat."""


def stale(info: dict, mtime: float, lease_s: float) -> bool:
    """Whether a claim (its JSON and its file's mtime) belongs to a process that is gone. Judged by its process when
    it names this host and process space (a claim written before claims had one: this host), a pid that can be one
    here and a start time as `_pid_start` gives it; else (another host or process space, or fields this module does
    not write) by its heartbeat: `lease_s`, or `DAMAGED_LEASE_S` when shorter and the claim holds nothing."""
    pid, start = info.get("pid"), info.get("pid_start")
    here = (info.get("host") == HOST and info.get("space", SPACE) == SPACE and type(pid) is int
            and 0 < pid < PID_LIMIT)
    if here and (start is None or isinstance(start, str)):
        return not alive(pid, start)
    return time.time() - mtime > (lease_s if info else min(lease_s, DAMAGED_LEASE_S))


def examine(path: Path, lease_s: float) -> tuple[os.stat_result, dict, bool] | None:
    """(the claim entry's own lstat, its JSON `claim_info`, whether it is `stale`), or None when there is none: how
    run_all (before taking a claim over) and bench.plan (naming who trains a run) both judge a claim. The entry
    itself: a link is judged by its own age, not by what it points at."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    info = claim_info(path)
    return st, info, stale(info, st.st_mtime, lease_s)


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
        found = examine(path, lease_s)
        if found is not None:
            st, info, is_stale = found
            if not is_stale:
                return None
            if stat.S_ISDIR(st.st_mode):  # a folder cannot be unlinked: kept, as any damaged outside file is
                print(f"warning: {path} is a folder where a claim file belongs, {files.set_aside(path)}",
                      file=sys.stderr)
            else:
                path.unlink()
            log(out, f"took over {key} from {owner(info)}")
        body = json.dumps({"host": HOST, "pid": os.getpid(), "pid_start": _pid_start(os.getpid()), "space": SPACE,
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
