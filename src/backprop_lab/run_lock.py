"""One run per directory: a lock on ``<run dir>/.lock``, held for as long as a run writes there.

The lock is taken before Hydra writes anything into a single run's directory (``checks.ConfigChecks``)
and again, from the same process, by :func:`backprop_lab.train.train` (so a run started from Python or
by a launcher's worker holds it too). A second run into a directory that is in use is refused in one
line, whichever of them started first. The lock is the operating system's (``filelock``, ``flock`` on
POSIX): a run that dies, even of SIGKILL, leaves no stale lock behind.

DDP's other ranks (started by Lightning with the same run directory) neither take nor check it: rank 0
holds it for them.

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from backprop_lab.config import ConfigError

LOCK_FILE = ".lock"
# Rank variables of the launchers Lightning knows (torchrun/Lightning's own, SLURM, LSF): any rank but 0
# is a secondary process of a run whose rank 0 holds the lock.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_held: dict[Path, tuple[FileLock, int]] = {}  # directory → (its lock, how many holders in this process)


def is_secondary_rank() -> bool:
    """Whether this process is a rank other than 0 of a multi-process run."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) != 0:
            return True
    return False


def lock_run_dir(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """Take the lock on ``run_dir`` (creating the directory), or ConfigError naming ``key`` where another
    process holds it. Taken again by the process that holds it, it is counted, not re-acquired."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        lock, count = _held[run_dir]
        _held[run_dir] = (lock, count + 1)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{key}={str(run_dir)!r} is not accepted: another run is writing into it right now (its lock "
            f"{run_dir / LOCK_FILE} is held); give another directory, or wait for that run to end"
        ) from None
    _held[run_dir] = (lock, 1)


def unlock_run_dir(run_dir: Path) -> None:
    """Give back one hold of the lock on ``run_dir``; the last one releases it."""
    run_dir = Path(run_dir).resolve()
    if run_dir not in _held:
        return
    lock, count = _held.pop(run_dir)
    if count > 1:
        _held[run_dir] = (lock, count - 1)
    else:
        lock.release()


@contextlib.contextmanager
def run_dir_locked(run_dir: Path, key: str = "hydra.run.dir") -> Iterator[None]:
    """The lock on ``run_dir`` held around a block (by rank 0 only; the other ranks run under its lock)."""
    if is_secondary_rank():
        yield
        return
    lock_run_dir(run_dir, key)
    try:
        yield
    finally:
        unlock_run_dir(run_dir)
