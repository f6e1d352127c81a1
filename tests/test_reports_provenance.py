"""Where a number of the report came from: the code of every session that trained its runs (the header's "Code"
line) and the runs behind each Table 3 cell (table3.csv's run keys)."""
from __future__ import annotations

from bench import schema
from reports.ledger import load_ledger
from reports.report import header
from test_reports import record, write_ledger


def session(from_epoch: int, commit: str | None = None, dirty: bool | None = None, code: str | None = None) -> dict:
    """One entry of a record's `sessions` as bench.runs.session writes it (all None but from_epoch: unknown)."""
    entry = dict.fromkeys(schema.SESSION_TYPES)
    return {**entry, "from_epoch": from_epoch, "git_commit": commit, "git_dirty": dirty, "code_sha256": code}


def test_the_code_line_counts_every_session_of_every_record(tmp_path):
    """A run resumed twice, from a checkpoint older than `sessions` and then from other code, shows all its code,
    not only its last session's (the record's own fields), and says that its first session is unknown."""
    resumed = record(lr=0.05, seed=0, test=9.2)
    resumed["sessions"] = [session(1), session(2, "a" * 40, False, "d0" * 32), session(3, "b" * 40, True, "e1" * 32)]
    resumed.update(git_commit="b" * 40, git_dirty=True, code_sha256="e1" * 32)
    older = record(lr=0.05, seed=1, test=9.4)  # no sessions: its own fields
    code = dict(header(load_ledger(write_ledger(tmp_path / "ledger", [resumed, older]))))["Code"]
    assert code == ("519e8c2aaaaa (1), aaaaaaaaaaaa (1), bbbbbbbbbbbb (dirty) (1); code_sha256 d0d0d0d0d0d0 (1), "
                    "code_sha256 e1e1e1e1e1e1 (1); 1 session unknown")
