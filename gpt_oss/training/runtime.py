"""Process-wide CPU settings that training speed depends on: how many threads, how freed memory
is reused.

A training step allocates and frees the same large tensors every step (gradients, the head's
bf16 weight copy and logit gradient: about 2.5 GB for the mini shape). glibc hands every block
over its mmap threshold (at most 32 MiB) back to the kernel when it is freed, so each step
faults the same memory in again, one zeroed 4 KiB page at a time: 500k-650k page faults and
0.45 s of a 2 s mini step on 2 cores, measured. Serving every block from the heap and never
trimming it lets a step reuse the previous step's pages: no faults.

When matters: switched on after the first optimizer step, the weights and the optimizer state
already sit in their own mappings and only the per-step tensors share the heap, so peak RSS
stays what glibc's default gives (4.61 GiB for mini, batch 2 x 256). Switched on before the
model is built, weights, moments and step tensors interleave in one heap and the holes between
them cost 0.3 GiB more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
ENV_SWITCH = "GPT_OSS_CPU_ALLOCATOR"  # "default" leaves glibc's policy alone


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (no mmap, no trimming); True if it took effect.

    Applies to the whole process from now on; no-op off glibc (macOS, musl) or when
    GPT_OSS_CPU_ALLOCATOR=default.
    """
    if os.environ.get(ENV_SWITCH, "keep") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success. The largest int threshold: the heap's free top is never
    # trimmed unless over 2 GiB.
    applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not applied:
        log.warning("mallopt refused; freed memory goes back to the kernel (slower CPU steps)")
    return applied


THREADS_ENV = "OMP_NUM_THREADS"  # set by the user: their choice wins over the automatic one
BUSY_SAMPLE_S = 0.25  # how long the CPU load is sampled before choosing the thread count


def free_cores(sample_s: float = BUSY_SAMPLE_S) -> tuple[int, int]:
    """(cores this process may use, of those the ones not busy with other processes now).

    Sampled over `sample_s` seconds (psutil's system-wide CPU utilisation) before this process
    starts its own work, so what is busy is someone else: a core counts as free when, on
    average, it is idle. At least 1."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 1
    busy_fraction = psutil.cpu_percent(interval=sample_s) / 100.0
    busy = busy_fraction * (psutil.cpu_count() or usable)
    return usable, max(1, min(usable, round(usable - busy)))


def choose_threads(requested: int = 0, environ: dict[str, str] | None = None) -> tuple[int, str]:
    """(CPU threads for torch's intra-op pool, why). `requested` > 0 is taken as given; else
    OMP_NUM_THREADS when set; else the free cores (see free_cores).

    Why not all cores: on a 2-core machine with one other busy process, 2 OpenMP threads made
    a tiny training run 2.5x slower than 1 and generation 17x slower (measured, issue 13):
    OpenMP threads spin-wait for each other, and one of them waits for the other process."""
    environ = os.environ if environ is None else environ
    if requested > 0:
        return requested, "trainer.threads"
    if environ.get(THREADS_ENV, "").strip().isdigit() and int(environ[THREADS_ENV]) > 0:
        return int(environ[THREADS_ENV]), THREADS_ENV
    usable, free = free_cores()
    return free, f"{free} of {usable} cores free of other work"


def set_cpu_threads(requested: int = 0, option: str = "trainer.threads") -> int:
    """Choose (choose_threads) and apply the intra-op thread count; logs the choice.

    `option` is the setting's name in the command that asked, for the log line and errors;
    ConfigError for a negative `requested`."""
    import torch

    from gpt_oss.model.config import ConfigError

    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ConfigError(
            f"{option}={requested!r} is invalid: 0 (the cores free of other work) or a thread count"
        )
    threads, why = choose_threads(requested)
    if why == "trainer.threads":
        why = option
    torch.set_num_threads(threads)
    log.info("CPU threads: %d (%s; %s=N sets it)", threads, why, option)
    return threads


def set_device_threads(device, requested: int = 0, option: str = "trainer.threads") -> int | None:
    """set_cpu_threads when `device` is the CPU (a GPU run's host threads are left alone);
    the thread count applied, or None."""
    if getattr(device, "type", str(device)) != "cpu":
        return None
    return set_cpu_threads(requested, option)
