"""Checkpoint retention: how many snapshots a run keeps, and copies that cost no disk.

A full checkpoint of a small model is mostly AdamW state (weights + two moments: 310 MB for
model=tiny), so a run that writes `last` and `best` as two full files doubles that, and sweeps
fill a disk fast. A hard link is a second name for the same bytes: `best` saved at the step
`last` was saved, or a kept snapshot of `last`, costs nothing until `last` is replaced (our
saves write a new file and rename it over the old name, so a link keeps the old bytes intact).
Filesystems without hard links get a copy.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

SNAPSHOT = re.compile(r"step_(\d+)(\.pt)?")
CHECKPOINT_BEST = ("weights", "full", "none")


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Hard-link source to target, or copy it where the filesystem has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_checkpoint(source: Path, target: Path) -> Path:
    """Replace target by a hard-linked copy of source (a file, or a sharded checkpoint directory),
    atomically: the old target stays whole until the rename."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.link")
    _remove(partial)
    if source.is_dir():
        shutil.copytree(source, partial, copy_function=link_or_copy)
        old = target.with_name(f"{target.name}.old")
        _remove(old)
        if target.exists():
            os.replace(target, old)
        os.replace(partial, target)
        _remove(old)
    else:
        link_or_copy(source, partial)
        os.replace(partial, target)
    return target


def snapshot_name(step: int, sharded: bool) -> str:
    """step_00000500.pt, or the directory step_00000500 for a sharded checkpoint."""
    return f"step_{step:08d}" + ("" if sharded else ".pt")


def keep_snapshot(folder: Path, step: int, keep: int, sharded: bool = False) -> list[Path]:
    """Record the just-saved `last` checkpoint as step_<step> and delete all but the `keep`
    most recent snapshots; returns the snapshots kept, oldest first."""
    last = folder / ("last" if sharded else "last.pt")
    link_checkpoint(last, folder / snapshot_name(step, sharded))
    snapshots = sorted(
        (p for p in folder.iterdir() if SNAPSHOT.fullmatch(p.name)),
        key=lambda p: int(SNAPSHOT.fullmatch(p.name).group(1)),
    )
    for old in snapshots[:-keep]:
        _remove(old)
    return snapshots[-keep:]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
