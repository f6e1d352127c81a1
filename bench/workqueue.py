"""The grid's work queue: each process claims the next pending run, longest first, with a claim file in the ledger
folder, so any number of processes started at any time (one `accelerate launch`, a SLURM job array, several
machines on one shared filesystem) share one `--out` without a static split and without waiting on each other.

    for members in claimed(work_items(longest_first(pending, num_images)), out, lease_s=3600, stop=stopped):
        for run, key, claim in members: ... train, claim.heartbeat() at each epoch end, write the record ...
    # each claim is released (deleted) when the loop asks for the next run or is left (SIGTERM, a failed write)

A claim (`bench.claims`) is `<out>/claims/<run_key>.json`, judged, taken over and created under one lock.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import allconv
from bench import files, results
from bench.claims import Claim, log, try_claim

DONE = ("completed", "diverged")
"""Statuses that end a run for good; "failed" and "stalled" runs are trained again on a rerun."""


def done_keys(out) -> set[str]:
    """Run keys with a final record in the ledger (`final`)."""
    return {r["run_key"] for r in results.read_records(out) if final(out, r)}


_misnamed: set[Path] = set()


def final(out, record: dict) -> bool:
    """Whether a valid record ends its run for good: its status is one of DONE, it is its run's (`not_its_run`)
    and it is what run_all writes for that status (`unlike_its_status`). One that is not (hand-edited, copied under
    another run's key, of a network since changed, "completed" after 3 of 350 epochs) counts as not done (the run is
    trained), named once on stderr and left in the ledger (the reports read it) until a process claims the run,
    which sets it aside (`_claim`) before its record replaces it."""
    if record["status"] not in DONE:
        return False
    why = not_its_run(record, record["run_key"]) or unlike_its_status(record)
    if why is None:
        return True
    path = results.runs_dir(out) / f"{record['run_key']}.json"
    if path not in _misnamed:
        _misnamed.add(path)
        print(f"warning: ledger file {path}: {why}, so it is not counted as that run (trained again)",
              file=sys.stderr)
    return False


def unlike_its_status(record: dict) -> str | None:
    """Why a record that would end its run for good (never trained again, its checkpoint deleted) is not what
    run_all writes for that status, or None: completed is every epoch and no error, diverged says why
    (bench.runs.summary; the reports count a short "completed" run as unfinished, reports.ledger.outcome)."""
    status, done, epochs = record["status"], record["epochs_completed"], record["epochs"]
    if status == "completed" and (done != epochs or len(record["history"]) != epochs):
        return f"status completed, but {done} of {epochs} epochs trained ({len(record['history'])} in its history)"
    if status == "completed" and record["error"] is not None:
        return f"status completed, but an error: {' '.join(str(record['error']).split())[:120]}"
    if status == "diverged" and record["error"] is None:
        return "status diverged, but no error saying why"
    return None


def not_its_run(record: dict, key: str) -> str | None:
    """Why a record is not run `key`'s, or None when it is: its config hashes to another key
    (`config.config_key`), or it trained another network than this code builds under its model's name (its forward
    MACs differ: a network of one's own widened after its runs; the run key names the model, not its layers)."""
    from bench.config import config_key

    if config_key(record["config"]) != key:
        return "its config does not hash to its run key"
    model, trained = record["model"], record["macs"]
    if allconv.specs.built_otherwise(model, trained):
        return (f"it trained another {model} than this code builds ({trained:,} forward MACs per image, not "
                f"{allconv.macs(model):,})")
    return None


def cost(run, num_images: dict) -> float:
    """A run's training work: epochs x training images x forward MACs per image (allconv.macs)."""
    return run.cfg.epochs * num_images[run.cfg.train_split] * allconv.macs(run.model)


def longest_first(pending: list, num_images: dict) -> list:
    """(run, key) pairs, the most work first (ties keep grid order): the grid ends soonest when the longest runs
    start first and the short ones fill the gaps at the end."""
    return sorted(pending, key=lambda rk: -cost(rk[0], num_images))


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
    """This process's claim on run `key`, or None (held by a live process, or recorded meanwhile). A record under
    `key` that is not that run's (`not_its_run`, whatever its status) or not what run_all writes for its status
    (`unlike_its_status`) is set aside, not replaced by the run's own record."""
    claim, error = None, None
    if not ddp or acc.is_main_process:
        try:
            claim = try_claim(out, key, lease_s)  # takes over the stale claim of an owner that died after recording
        except files.WriteError as e:
            error = e
        path = results.runs_dir(out) / f"{key}.json"
        record = results.read_one(path)[0] if claim is not None else None
        if record is not None and final(out, record):  # finished by another process meanwhile
            claim.release()
            claim = None
        elif claim is not None:
            why = None if record is None else not_its_run(record, key) or unlike_its_status(record)
            if why is not None:  # not its run's: kept as evidence
                print(f"warning: ledger file {path} is not run {key} ({why}), {files.set_aside(path)} before the "
                      "run is trained", file=sys.stderr)
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
    (an evaluation image costs about a third of a training image; only the epochs its run evaluates, `evaluates`:
    44 of the paper preset's 350), spread over all processes."""
    first = allconv.macs(pending[0][0].model)

    def images(c) -> float:
        evaluated = sum(c.evaluates(n) for n in range(1, c.epochs + 1))
        return c.epochs * num_images[c.train_split] + evaluated * num_images["test"] / 3

    work = sum(images(r.cfg) * allconv.macs(r.model) / first for r, _ in pending)
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
