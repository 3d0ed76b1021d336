"""One GPU per sweep job: pin a multirun worker process to a GPU before CUDA starts.

`hydra/launcher=gpu_pool` runs N jobs at once in N joblib (loky) worker processes. CUDA reads
CUDA_VISIBLE_DEVICES once, at a process's first CUDA call, and loky reuses a worker for later
jobs, so a GPU belongs to a worker process, not to a job number: at its first job a process
claims a free GPU (an flock'd file per GPU, released by the OS when the process exits),
trying job_num % n first, and keeps that GPU for every later job it runs.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# Read at import, before pin_process_gpu rewrites it: the GPUs the launcher gave this process.
_INHERITED = os.environ.get("CUDA_VISIBLE_DEVICES")
_claimed: tuple[str, IO | None] | None = None  # (GPU id, its held lock file) once pinned


def visible_gpus(cuda_visible_devices: str | None = None) -> list[str]:
    """GPU ids a process may use: CUDA_VISIBLE_DEVICES's entries when it is set (even to
    ""), else nvidia-smi's list; never touches CUDA itself (that would fix the device set)."""
    if cuda_visible_devices is not None:
        return [gpu.strip() for gpu in cuda_visible_devices.split(",") if gpu.strip()]
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return result.stdout.split() if result.returncode == 0 else []


def gpu_count() -> int:
    """How many jobs the pool runs at once: one per visible GPU, at least one."""
    return max(1, len(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))))


def claim_gpu(gpus: list[str], job_num: int, lock_dir: Path) -> tuple[str, IO | None]:
    """Lock a free GPU, trying job_num % len(gpus) first. With every GPU taken (more workers
    than GPUs) it shares job_num's GPU and warns; the returned file must stay open."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, like CUDA multi-GPU training

    for offset in range(len(gpus)):
        gpu = gpus[(job_num + offset) % len(gpus)]
        handle = open(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return gpu, handle
    gpu = gpus[job_num % len(gpus)]
    log.warning(
        "gpu_pool: all %d GPUs are taken (more workers than GPUs); job %d shares GPU %s",
        len(gpus),
        job_num,
        gpu,
    )
    return gpu, None


def pin_process_gpu(job_num: int, lock_dir: Path) -> str | None:
    """Set CUDA_VISIBLE_DEVICES to this process's GPU (claimed at its first job); None (and
    nothing changed) when no GPU is visible."""
    global _claimed
    if _claimed is None:
        gpus = visible_gpus(_INHERITED)
        if not gpus:
            log.warning(
                "gpu_pool: no GPU visible (CUDA_VISIBLE_DEVICES, nvidia-smi); job %d "
                "runs where trainer.device says",
                job_num,
            )
            return None
        _claimed = claim_gpu(gpus, job_num, lock_dir)
    os.environ["CUDA_VISIBLE_DEVICES"] = _claimed[0]
    return _claimed[0]
