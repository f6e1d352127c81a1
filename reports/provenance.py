"""Which code trained the ledger's runs, on which pixels: the report header's "Code" and "Pixels" lines
(reports/report.py).

    code_line(df) -> "519e8c2aaaaa (3), 994fe2f98772 (dirty) (1); code_sha256 d0d0d0d0d0d0 (4); 1 session unknown"
    pixels_line(df) -> "arrays_sha256 5d1f0c2b9e4a (3); not recorded (1)"

A run resumed from a checkpoint trained in several process sessions, perhaps from other code in each; its record's
own git_commit and code_sha256 are the last session's only. So the line counts every session of every record
(record field `sessions`, bench/schema.py).
"""
from __future__ import annotations

from collections import Counter

import pandas as pd

from reports.ledger import _counted, _known

CODE_FIELDS = ("git_commit", "git_dirty", "code_sha256")


def sessions_of(record: dict) -> list[dict]:
    """A record's sessions; a record without them (older than the field) is one session of its own fields."""
    sessions = record.get("sessions")
    if isinstance(sessions, list) and sessions:
        return sessions
    return [{k: record.get(k) for k in CODE_FIELDS}]


def code_line(df: pd.DataFrame) -> str:
    """The commits (dirty where git_dirty is true) and code digests of the records' sessions, each counted per
    session, and how many sessions name neither: the entry a run resumed from a checkpoint older than `sessions`
    starts with (earlier sessions unknown). "not recorded" when no session names either."""
    commits, codes, unknown = Counter(), Counter(), 0
    for record in df[[*CODE_FIELDS, "sessions"]].to_dict("records"):
        for s in sessions_of(record):
            commit, dirty, code = (s.get(k) for k in CODE_FIELDS)
            if _known(commit):
                commits[f"{str(commit)[:12]}{' (dirty)' if _known(dirty) and bool(dirty) else ''}"] += 1
            if _known(code):
                codes[f"code_sha256 {str(code)[:12]}"] += 1  # the files themselves: right where a .git is stale
            unknown += not (_known(commit) or _known(code))
    if not (commits or codes):
        return "not recorded"
    lost = [f"{unknown} session{'s' * (unknown != 1)} unknown"] if unknown else []
    return "; ".join([*(_counted(c) for c in (commits, codes) if c), *lost])


def pixels_line(df: pd.DataFrame) -> str:
    """The records' `data.arrays_sha256` (loaders.manifest.arrays_sha256: the prepared images and labels a run saw,
    as this machine's decoder made them), each counted per record, and how many records do not name it (older
    than the field). Runs with one digest saw the same pixels; two digests of one source mean two decodings, and
    the line says so. "not recorded" when no record names it."""
    digests, unknown = Counter(), 0
    for data in df["data"]:
        digest = data.get("arrays_sha256") if isinstance(data, dict) else None
        if _known(digest):
            digests[f"arrays_sha256 {str(digest)[:12]}"] += 1
        unknown += not _known(digest)
    if not digests:
        return "not recorded"
    line = "; ".join([_counted(digests), *([f"not recorded ({unknown})"] if unknown else [])])
    return line + (" -- MIXED: not every run saw the same pixels" if len(digests) > 1 else "")
