"""Files that readers may see at any moment, written whole or not at all, and outside files set aside, never lost.

    atomic_write(path, lambda f: f.write(data))   # every record, checkpoint, weights file, cache and claim log
    set_aside(path)                               # a damaged or invalid file -> .invalid/ beside it
    read_regular(path, limit)                     # an outside file's bytes: a regular file of at most limit bytes

A write that fails raises `WriteError` (an OSError naming the file): callers tell a full disk (stop, rerun later)
from a failed run.
"""
from __future__ import annotations

import fcntl
import glob
import os
import stat
from pathlib import Path


def atomic_write(path: str | os.PathLike, write) -> Path:
    """The one atomic writer: `write(f)` fills a temporary file (binary, same folder), which is fsynced and renamed
    over `path`. Readers see the old file or the new one, never half of one. On any error (ENOSPC, EIO, an
    exception in `write`) the temporary file is removed, the previous `path` is left as it was, and the error is
    raised. Creates the folder. `f.name` is the temporary path, for writers that need a file name (FFCV). The
    temporary file is named by host and pid: one that a killed writer of this host left behind (a checkpoint's
    size) is removed by the next write of the same file. The temporary file is created anew, never opened through
    a link: one planted under its name (or left by an earlier process of the same pid) is removed first."""
    from bench.claims import HOST

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path, f".{path.name}.{HOST}.")
        tmp.unlink(missing_ok=True)  # a link there would carry the write to its target
        with open(tmp, "xb") as f:  # O_CREAT | O_EXCL: a new file, never through a link (one put there meanwhile)
            fcntl.flock(f, fcntl.LOCK_EX)  # held while writing: no cleaner removes a live writer's file
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic within one filesystem
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _remove_orphans(path: Path, prefix: str) -> None:
    """`path`'s temporary files named `prefix<pid>.tmp` whose process no longer runs (this host's only: another
    host's pids mean nothing here) and that no writer holds locked (a writer in another pid namespace of the same
    host name). Only regular files, opened without following a link or waiting: a FIFO or link under such a name is
    left alone. Best effort: a file it may not remove (another user's) is left, and the write goes on."""
    from bench.claims import alive

    for tmp in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = tmp.name[len(prefix):-len(".tmp")]
        if not (pid.isdigit() and len(pid) <= 10) or int(pid) == os.getpid() or alive(int(pid), None):
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)  # a FIFO opens at once; a link: ELOOP
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError (BlockingIOError) while a writer holds it
                tmp.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


class WriteError(OSError):
    """`atomic_write` could not write `filename` (full disk, read-only folder): an OSError that names the file it
    was writing, so a caller tells a failed write (stop, rerun later) from a failed run."""


def set_aside(path: Path) -> str:
    """Move a damaged or invalid file to `.invalid/` in its folder (never deleted: it may be evidence or be
    repairable by hand); returns where it went, for the caller's one warning line. A file set aside earlier under
    the same name stays: the new one is `<name>.1` (`.2`, ...). A `.invalid` that is not a folder (a link, which
    would carry the file out of the folder, or a file) leaves it in place."""
    folder = path.parent / ".invalid"
    try:
        try:
            folder.mkdir()
        except FileExistsError:  # a link (to a folder outside) or a file is no place for it: it stays where it is
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return f"left in place ({folder} is not a folder)"
        aside, n = folder / path.name, 0
        while os.path.lexists(aside):  # os.replace would overwrite it (or a dangling link's name)
            n += 1
            aside = folder / f"{path.name}.{n}"
        os.replace(path, aside)
    except OSError as e:  # another reader moved it first, or a read-only folder: skipped all the same
        return f"left in place ({e.strerror or e})"
    return f"moved to {aside}"


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of an outside file that is a regular file of at most `limit` bytes, else ValueError saying what
    it is (OSError when it cannot be opened). Opened without blocking, so a FIFO does not hang the reader, and read
    no further than `limit`, so a link to /dev/zero or a huge file does not exhaust memory."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        with open(fd, "rb", closefd=False) as f:  # its size, not the limit: a read reserves what it asks for
            data = f.read(st.st_size + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while read
        raise ValueError(f"larger than {limit} bytes")
    return data
