"""What a CPU run will cost, said before it starts, and a sign of life while its first step runs.

A CPU step can take minutes (mini at 16 x 512 with o200k's full head: 188 s and 9.9 GB for
step 1, measured, with nothing printed): the run prints its estimated step time, total time
and peak memory first, and while step 1 runs a Heartbeat reports the seconds so far against
that estimate.

The step time is measured, not derived from FLOPs: metrics.cpu_step_estimate (FLOPs at a
1024^3 matmul's rate) said 0.11 s for a model=small step that took 2.3 s, because on a CPU the
small matmuls and the element-wise work (the softmax over the vocabulary, norms, routing) cost
more than the large-matmul rate suggests. So the model runs forward and backward on one
sequence of random tokens (no optimizer step, gradients dropped, global RNG untouched) and the
step is that time the batch's number of sequences.

The peak memory is the process's peak RSS, estimated (cpu_memory_plan) as the sum of: the RSS
before step 1, measured (Python, torch, tokenizer, data, fp32 weights: ~0.45 GiB for tiny and
small, half to nearly all of their peak); fp32 gradients and AdamW's two moments (12 bytes per
parameter); autocast's weight copies; the activations autograd saves for one probe sequence,
measured (saved_activation_bytes), times the micro-batch; the loss head as model/losses.py runs
it on a CPU (one chunk's logits or the kept logit gradient, 32 MiB of float32 softmax rows);
and, in bf16 or fp16, oneDNN's growth. The peak so far (data preparation) is its floor.
metrics.cpu_step_estimate's analytic figure (size.training_memory) said 0.6 GiB for the README
run that peaked at 2.9 GB: it has no process baseline, and no growth.

The growth: each expert group's row count changes every step, a low-precision matmul of a new
shape is a new oneDNN primitive, and while its cache (1024 primitives) fills the process grows
by about 1.25x the float32 size of the matmul's mean output per primitive: +1.65 GiB for small
at 16 x 256, half of its peak, by step ~50 (1 thread; float32 runs, on MKL, level off at step
3). The rule is fit to the runs below (group sizes rounded to 32 rows then), not derived;
moe.cpu_group_multiple (since 2026-12-01 coarser for large batches: 256 rows for small at
16 x 256, whose bf16 bench peak fell from 2.70 to 1.20 GiB) sets how many shapes there can be.

Measured against estimated (2026-12-01, 2-core Intel Xeon with AMX bf16, torch 2.13, 1 thread
unless said; `python -m gpt_oss.train model=M trainer=cpu logger=none data=text
'data.train_files=[../shared/data/tinystories_sample.jsonl]' trainer.threads=1` plus the
shape, precision and steps; peak RSS by /usr/bin/time -v or ru_maxrss, GiB):

    model (vocab)     batch x seq  precision  steps  estimated  measured
    small (8192)      16 x 256     bf16       1200   2.55       2.70 (README run, 2 threads)
    small (8192)      16 x 256     bf16       60     2.56       2.55
    small (8192)      16 x 256     bf16       3      1.4        1.37
    small (8192)      16 x 256     fp32       3      1.1        1.17
    small (8192)      8 x 256      bf16       100    1.39       1.34
    tiny (8192)       16 x 256     bf16       60     1.14       1.09
    tiny (8192)       16 x 256     fp32       60     0.73       0.75
    tiny (8192)       4 x 128      bf16       200    0.51       0.60
    mini (8192)       4 x 256      bf16       40     2.36       2.19
    mini (8192)       16 x 256     bf16       40     5.77       6.57 (still growing)
    mini (201088)     2 x 256      bf16       12     5.13       4.94
    mini (201088)     16 x 512     fp32       2000   9.06       9.2 (9.9 GB at step 1, earlier)

Training steps set the peak: evaluation added at most 0.04 GiB, once, and checkpoint writing
(torch.save streams to the file) nothing measurable. Data preparation in the same process
(+0.2 GiB for the sample) is still resident before step 1, so the measured RSS holds it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

from gpt_oss.model import moe
from gpt_oss.model.config import ModelConfig
from gpt_oss.model.losses import LOGITS_BYTES, SOFTMAX_BYTES, defers_weight_grad
from gpt_oss.model.size import loss_head_bytes, parameter_counts

log = logging.getLogger(__name__)

SLOW_STEP_S = 10.0  # above this estimated step time the preview is a warning with advice
HEARTBEAT_S = 10.0  # seconds between reports while the first step runs


@dataclass
class CpuPreview:
    """The estimate for one run: seconds per optimizer step, peak bytes, steps to go."""

    step_s: float
    peak_bytes: float
    steps: int

    @property
    def slow(self) -> bool:
        return self.step_s > SLOW_STEP_S

    def message(self, threads: int) -> str:
        plural = "s" if threads != 1 else ""
        text = (
            f"CPU run ({threads} thread{plural}): about {self.step_s:.2g} s per step, "
            f"{self.steps} steps ~ {_duration(self.step_s * self.steps)}, "
            f"peak memory ~ {self.peak_bytes / 2**30:.2g} GiB (estimated)"
        )
        if self.slow:
            text += (
                "; this shape is meant for a GPU: for a CPU run try the README's CPU command "
                "(model=small trainer=cpu) or a smaller trainer.batch_size / trainer.seq_len"
            )
        return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


PROBE_BUDGET_S = 2.0  # repeat the one-sequence probe (best of up to 3) while under this


def sequence_seconds(run_sequence: Callable[[], None]) -> float:
    """Seconds for one call of run_sequence (forward and backward of one sequence): the best
    of up to 3 calls while their total stays under PROBE_BUDGET_S (a slow model: one call)."""
    times: list[float] = []
    while len(times) < 3 and sum(times) < PROBE_BUDGET_S:
        began = time.perf_counter()
        run_sequence()
        times.append(time.perf_counter() - began)
    return min(times)


def preview_cpu_run(
    config: ModelConfig,
    batch_size: int,
    seq_len: int,
    steps: int,
    dtype: torch.dtype | None,
    run_sequence: Callable[[], None],
    threads: int | None = None,
    grad_accum: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
) -> CpuPreview:
    """Measure and log the cost of `steps` optimizer steps of batch_size sequences of seq_len
    tokens (grad_accum micro-batches each): the step time from sequence_seconds, the peak
    memory from cpu_memory_plan with this process's RSS now and the activations the first
    probe saves; a warning, with advice, when one step takes longer than SLOW_STEP_S.
    run_sequence runs forward and backward of one sequence of seq_len tokens (dtype: the
    autocast dtype, None for float32); optimizer: its state, when a resumed run already holds
    it, is part of the RSS now."""
    log.info("timing one sequence of %d tokens to estimate the step time...", seq_len)
    resident, reached = process_rss_bytes(), peak_rss_bytes()
    resident -= tensor_bytes(optimizer.state) if optimizer is not None else 0  # counted below
    saved: list[int] = []

    def probe() -> None:  # the first call also counts what autograd saves (a few ms more)
        if saved:
            run_sequence()
        else:
            saved.append(saved_activation_bytes(run_sequence))

    step_s = batch_size * sequence_seconds(probe)
    plan = cpu_memory_plan(
        config,
        batch_size // grad_accum,
        seq_len,
        steps * grad_accum,
        dtype or torch.float32,
        resident,
        saved[0],
    )
    log.debug("CPU memory plan (bytes): %s", plan)
    preview = CpuPreview(step_s, max(plan["total"], reached), steps)
    threads = torch.get_num_threads() if threads is None else threads
    (log.warning if preview.slow else log.info)(preview.message(threads))
    return preview


# ---------------------------------------------------------------------------- peak memory

# oneDNN keeps this many primitives (compiled matmuls, one per shape) unless
# ONEDNN_PRIMITIVE_CACHE_CAPACITY says otherwise.
ONEDNN_CACHE_ENV, ONEDNN_CACHE_DEFAULT = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", 1024
# Per expert group and micro-step: the up and down projections forward, and the input and
# weight gradient of each in backward.
EXPERT_MATMULS = 6
# Process growth per cached expert-matmul primitive, in float32 bytes of the matmul's mean
# output: fit to the bf16 runs of the module docstring (their ratios: 0.7 to 1.5).
GROWTH_PER_OUTPUT_BYTE = 1.25
# autograd nodes that hand a tensor through unchanged in values (views, casts): a saved tensor
# reached from a parameter through these only is the parameter or its autocast copy
_PASS_THROUGH = frozenset(
    {
        "ToCopyBackward0",
        "TBackward0",
        "TransposeBackward0",
        "PermuteBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "ExpandBackward0",
        "AliasBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
    }
)
_ACCUMULATE_GRAD = "torch::autograd::AccumulateGrad"


def process_rss_bytes() -> int:
    """This process's resident set size now, bytes."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (getrusage's ru_maxrss), bytes; where
    there is no getrusage (Windows), the RSS now."""
    try:
        import resource
    except ImportError:
        return process_rss_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


def tensor_bytes(state: dict) -> int:
    """Bytes of the tensors in an optimizer's state ({parameter: {name: value}})."""
    return sum(
        value.nbytes
        for values in state.values()
        for value in values.values()
        if isinstance(value, torch.Tensor)
    )


def saved_activation_bytes(run_sequence: Callable[[], None]) -> int:
    """Run run_sequence() (forward and backward of one sequence) and return the bytes autograd
    saved for its backward: the activations, which grow with the batch. Parameters and their
    views and casts (autocast's bf16 weights: a cost per step, not per sequence) are left out;
    a storage saved by several nodes counts once."""
    sizes: dict[int, int] = {}  # storage address -> bytes

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not _parameter_or_copy(tensor):
            storage = tensor.untyped_storage()
            sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run_sequence()
    return sum(sizes.values())


def _parameter_or_copy(tensor: torch.Tensor) -> bool:
    if tensor.grad_fn is None:
        return tensor.requires_grad  # a leaf that needs a gradient: a parameter
    node = tensor.grad_fn
    while node.name() in _PASS_THROUGH:
        inputs = [next_node for next_node, _ in node.next_functions if next_node is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return node.name() == _ACCUMULATE_GRAD


def cpu_memory_plan(
    config: ModelConfig,
    micro_batch: int,
    seq_len: int,
    micro_steps: int,
    dtype: torch.dtype,
    resident_bytes: float,
    saved_bytes_per_sequence: float,
) -> dict[str, float]:
    """Bytes of a one-process CPU training run at its peak, by part, and their "total".

    resident_bytes: the process's RSS before step 1 (Python, torch, tokenizer, data, the fp32
    weights); saved_bytes_per_sequence: what autograd saves for backward for one sequence of
    seq_len tokens (saved_activation_bytes); micro_batch sequences per forward and backward,
    micro_steps of them in the run; dtype: the autocast dtype (float32: none). The optimizer
    state is AdamW's two fp32 moments (an upper bound for Muon's one momentum). ValueError
    when micro_batch or seq_len is below 1 or micro_steps below 0."""
    bounds = {"micro_batch": (micro_batch, 1), "seq_len": (seq_len, 1)}
    for name, (value, least) in (bounds | {"micro_steps": (micro_steps, 0)}).items():
        if value < least:
            raise ValueError(f"{name}={value} is invalid: it must be an integer >= {least}")
    counts = parameter_counts(config)
    params, tokens = counts["total"], micro_batch * seq_len
    low_precision = dtype in (torch.bfloat16, torch.float16)
    # autocast's copies of the blocks' matrices, saved for backward (the head's: loss head)
    blocks = params - counts["embedding"] - counts["unembedding"]
    plan = {
        "process before step 1 (measured)": float(resident_bytes),
        "gradients (fp32)": 4.0 * params,
        "optimizer states (AdamW)": 8.0 * params,
        "weight copies (autocast)": dtype.itemsize * blocks if low_precision else 0.0,
        "activations (measured per sequence)": float(saved_bytes_per_sequence * micro_batch),
        "loss head": cpu_loss_head_bytes(config, tokens, dtype),
        "oneDNN matmul shapes": (
            onednn_shape_bytes(config, tokens, micro_steps)
            if low_precision and torch.backends.mkldnn.is_available()
            else 0.0
        ),
    }
    plan["total"] = sum(plan.values())
    return plan


def cpu_loss_head_bytes(config: ModelConfig, tokens: int, dtype: torch.dtype) -> float:
    """Bytes the unembedding and cross-entropy (model/losses.py) hold beyond the weight's
    gradient on a CPU, for `tokens` tokens with matmuls in `dtype`: the cast head, the logits
    of one chunk (capped by LOGITS_BYTES) or the kept logit gradient of all tokens, float32
    log-probabilities of SOFTMAX_BYTES, the cast hidden states and their gradient."""
    if config.loss_chunk_tokens <= 0:  # whole-batch logits: the plain path's own accounting
        return loss_head_bytes(config, tokens)
    vocab, hidden, size = config.vocab_size, config.hidden_size, dtype.itemsize
    cast_head = vocab * hidden * size if size < 4 else 0  # float32: .to() is the weight itself
    chunk = min(config.loss_chunk_tokens, tokens, max(1, LOGITS_BYTES["cpu"] // (vocab * size)))
    softmax_rows = min(chunk, max(1, SOFTMAX_BYTES["cpu"] // (vocab * 4)))
    if defers_weight_grad(tokens, vocab, hidden, dtype):
        logits = tokens * vocab * size  # the whole batch's logit gradient, kept for backward
    else:  # one chunk's logits; a low-precision product is added to the fp32 gradient
        logits = chunk * vocab * size + (vocab * hidden * 4 if size < 4 else 0)
    return cast_head + logits + softmax_rows * vocab * 4 + tokens * hidden * (size + 4)


def onednn_shape_bytes(config: ModelConfig, tokens: int, micro_steps: int) -> float:
    """Bytes a low-precision CPU run grows by from oneDNN matmuls of ever new shapes over
    micro_steps forward and backward passes of `tokens` tokens (a rule fit to measured runs,
    see the module docstring): each expert group's row count changes every step (rounded up
    to moe.cpu_group_multiple), every new count is a new cached primitive, and the process
    grows by GROWTH_PER_OUTPUT_BYTE x the float32 size of the mean expert-matmul output per
    cached primitive, until the cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY, default 1024) is
    full."""
    rows = tokens * config.experts_per_token  # routed copies of the tokens, all experts
    multiple = 1
    if config.moe_impl == "grouped":
        multiple = moe.cpu_group_multiple(rows, config.num_experts)
    hidden, width = config.hidden_size, config.intermediate_size
    group = rows / config.num_experts  # the mean group
    # outputs of up (group x 2I), down (group x H), their input gradients (group x I and
    # group x H) and weight gradients (I x H and H x 2I)
    mean_output = (group * (3 * width + 2 * hidden) + 3 * hidden * width) / EXPERT_MATMULS
    sizes = EXPERT_MATMULS * math.ceil(rows / multiple)  # distinct shapes there can be
    draws = EXPERT_MATMULS * config.num_experts * config.num_hidden_layers * micro_steps
    seen = sizes * -math.expm1(-draws / sizes)  # expected distinct of `draws` uniform draws
    return min(seen, onednn_cache_capacity()) * GROWTH_PER_OUTPUT_BYTE * 4.0 * mean_output


def onednn_cache_capacity() -> int:
    """oneDNN's primitive cache capacity: ONEDNN_PRIMITIVE_CACHE_CAPACITY or its default."""
    value = os.environ.get(ONEDNN_CACHE_ENV, "")
    return int(value) if value.strip().isdigit() else ONEDNN_CACHE_DEFAULT


class Heartbeat:
    """Calls report(seconds_so_far) every `interval` seconds from a daemon thread until the
    block ends; use as `with Heartbeat(report, interval): first_step()`."""

    def __init__(self, report: Callable[[float], None], interval: float = HEARTBEAT_S) -> None:
        self.report, self.interval = report, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="first-step-heartbeat", daemon=True)

    def _beat(self) -> None:
        started = time.perf_counter()
        while not self._done.wait(self.interval):
            self.report(time.perf_counter() - started)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()


def first_step_report(bar, estimate_s: float | None) -> Callable[[float], None]:
    """A Heartbeat report: on the tqdm bar when it is shown, else in the log."""
    expected = f" of ~{estimate_s:.0f} s estimated" if estimate_s else ""

    def report(seconds: float) -> None:
        text = f"step 1 running: {seconds:.0f} s{expected}"
        if getattr(bar, "disable", True):
            log.info(text)
        else:
            bar.set_postfix_str(text, refresh=True)

    return report
