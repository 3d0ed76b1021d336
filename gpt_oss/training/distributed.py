"""Training on several processes: joining them, wrapping the model (DDP or FSDP2) and activation
checkpointing. Sharded checkpoints are training.checkpoint_sharded's; rank 0 preparing the data
for all ranks is data.prepare.prepare_data.

Processes come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or from
SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of SLURM_JOB_NODELIST), one per
GPU; rank r trains on cuda:LOCAL_RANK with NCCL, or on the CPU with gloo. With
`trainer.parallel=none` nothing here does anything, so single-process runs are unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt_oss.model.config import ConfigError
from gpt_oss.model.model import GptOss, LossOutput, yarn_inverse_frequencies

PARALLEL_MODES = ("none", "ddp", "fsdp")

LossFn = Callable[[torch.Tensor, torch.Tensor], LossOutput]


# ----------------------------------------------------------------------------------------------
# Who am I: launch environment, process group, device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # index of this process on its node: its GPU

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory, logs and shows progress."""
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM nodelist: "gpu[003-004,7],cpu1" -> "gpu003"."""
    match = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", nodelist.strip())
    if match is None:
        raise ConfigError(f"cannot read the SLURM nodelist {nodelist!r}")
    return match.group(1) + (match.group(2) or "")


def slurm_launch(environ: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables from SLURM's, for a step of several tasks (srun, submitit); else {}."""
    if "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST", "127.0.0.1")
    job_id = int(environ.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
        # one port per job, so two jobs sharing a node do not meet at the same address
        "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + job_id % 20000),
    }


def launch_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: torchrun's when it started this
    process, else derived from SLURM's; {} for a process started alone."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        return {key: environ[key] for key in keys if key in environ}
    return slurm_launch(environ)


def launch_world(environ: Mapping[str, str] | None = None) -> World:
    """The World the launcher asked for, read before any process group exists."""
    env = launch_env(environ)
    if not env:
        return World()
    return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))


def current_world() -> World:
    """The World of the initialised process group (a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: torch.device, world: World) -> torch.device:
    """cuda means this rank's GPU, cuda:LOCAL_RANK; an explicit index or the CPU is kept."""
    if device.type == "cuda" and device.index is None and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def process_group(parallel: str, device: torch.device) -> Iterator[World]:
    """Join the training processes for ddp/fsdp (NCCL on CUDA, gloo on the CPU) and leave at the
    end; a process started alone forms a group of one. parallel=none joins nothing."""
    if parallel == "none" or dist.is_initialized():  # none, or the caller already joined
        yield current_world()
        return
    env = launch_env()
    world = launch_world()
    device = rank_device(device, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env:
        os.environ.update(env)  # SLURM's values in torchrun's names, read by init (env://)
        dist.init_process_group(
            backend,
            rank=world.rank,
            world_size=world.size,
            device_id=device if device.type == "cuda" else None,
        )
    else:  # alone: an in-memory store, no port to pick
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside a process group (also a group of one)."""
    return dist.is_available() and dist.is_initialized()


def broadcast_object(value: Any, group: Any = None) -> Any:
    """Rank 0's value on every rank (itself when there is no process group)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def mean_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean over ranks (SUM, then divide: gloo has no AVG)."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def sum_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the sum over ranks."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the maximum over ranks."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def sum_floats(values: tuple[float, ...], device: torch.device) -> tuple[float, ...]:
    """Python numbers summed over ranks in float64 (returned unchanged in one process)."""
    if not is_distributed() or dist.get_world_size() == 1:
        return values
    return tuple(sum_over_ranks_(torch.tensor(values, dtype=torch.float64, device=device)).tolist())


# ----------------------------------------------------------------------------------------------
# The model: placement, activation checkpointing, DDP / FSDP2


def place_model(model: GptOss, device: torch.device, parallel: str) -> GptOss:
    """The model on its device; FSDP moves it itself, one block at a time, after sharding."""
    return model if parallel == "fsdp" else model.to(device)


def checkpoint_blocks(model: GptOss) -> None:
    """Activation checkpointing: each block keeps only its input for backward and recomputes
    the rest (torch.utils.checkpoint, non-reentrant). Names and weights are unchanged."""
    for block in model.layers:
        block.forward = _recomputed(block.forward)


def _recomputed(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation and generation store nothing anyway
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


class LossForward(nn.Module):
    """model.loss as a forward(), so DDP sees the training forward pass (it hooks forward only)."""

    def __init__(self, model: GptOss, compiled: bool = False):
        super().__init__()
        self.model, self.compiled = model, compiled

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        return self.model.loss(input_ids, targets, compiled=self.compiled)


def parallelize(
    model: GptOss, parallel: str, device: torch.device, compiled: bool = False
) -> LossFn:
    """Wrap the model for data parallelism; returns the training loss function to call.

    none: model.loss. ddp: DistributedDataParallel around it (gradients all-reduced). fsdp:
    FSDP2 fully_shard per block, for the input embedding and for the rest (parameters, grads
    and optimizer state sharded); `model` itself becomes the sharded model. compiled: the
    loss's softmax runs torch.compile'd (trainer.compile).
    """
    if parallel == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            LossForward(model, compiled), device_ids=ids, **_no_buffer_sync()
        )
    if parallel != "none":
        shard_model(model, device)
    return functools.partial(model.loss, compiled=compiled)


def _no_buffer_sync() -> dict[str, bool]:
    """No buffer broadcast at each forward: the selection biases change identically on every
    rank (their counts are all-reduced). torch 2.13 renamed the argument."""
    parameters = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return {
        "forward_sync_buffers"
        if "forward_sync_buffers" in parameters
        else "broadcast_buffers": False
    }


def shard_model(model: GptOss, device: torch.device) -> None:
    """FSDP2: one unit per block, one for the input embedding (unless tied to the head), and
    the root (head, final norm). A model built on the meta device is initialised here, shards
    only."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    if not model.config.tie_embeddings:
        fully_shard(model.embed_tokens, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "loss")  # the trainer calls loss(), not forward()
    if any(p.is_meta for p in model.parameters()):
        initialize_sharded(model, device)


@torch.no_grad()
def initialize_sharded(model: GptOss, device: torch.device) -> None:
    """Allocate a meta-built, sharded model on `device` and initialise it like GptOss does."""
    model.to_empty(device=device)
    model.reset_parameters()  # on DTensors: each rank draws its own shards
    model.rotary.inv_freq = yarn_inverse_frequencies(model.config).to(device)
    for block in model.layers:
        block.mlp.router.selection_bias.zero_()


def grad_sync(loss_fn: LossFn, enabled: bool) -> contextlib.AbstractContextManager:
    """DDP: skip the all-reduce on all but the last micro-batch (no_sync). FSDP reduce-scatters
    every micro-batch: holding unsharded gradients instead would cost a full model's worth."""
    if enabled or not isinstance(loss_fn, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return loss_fn.no_sync()
