"""The training loop: steps, evaluation, checkpoints, resume, metrics, plots, summary."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from gpt_oss.files import remove_stale_temporaries
from gpt_oss.model.config import ConfigError, resolve_device
from gpt_oss.model.model import GptOss
from gpt_oss.model.precision import PRECISIONS, autocast_dtype, resolve_precision
from gpt_oss.model.vocabulary import Vocabulary
from gpt_oss.studies.plots import plot_losses
from gpt_oss.training.checkpoint import (
    capture_rng,
    check_resumable,
    check_vocabulary,
    find_checkpoint,
    load_optimizer_state,
    optimizer_name,
    read_checkpoint,
    resolve_resume,
    restore_rng,
    save_checkpoint,
    schedule_change,
)
from gpt_oss.training.checkpoint_sharded import load_sharded, read_trainer_state, save_sharded
from gpt_oss.training.cpu_preview import CpuPreview, Heartbeat, first_step_report, preview_cpu_run
from gpt_oss.training.debugging import RepeatedBatches, StepProfiler
from gpt_oss.training.distributed import (
    PARALLEL_MODES,
    World,
    checkpoint_blocks,
    current_world,
    grad_sync,
    mean_over_ranks_,
    parallelize,
    place_model,
    rank_device,
    sum_floats,
    sum_over_ranks_,
)
from gpt_oss.training.metrics import bits_per_byte, flops_per_token, peak_flops
from gpt_oss.training.retention import CHECKPOINT_BEST, keep_snapshot, link_checkpoint
from gpt_oss.training.runtime import keep_freed_memory, set_device_threads
from gpt_oss.training.signals import StopRequest, exit_status
from gpt_oss.training.tracking import MetricsFile, NullLogger, read_metrics
from gpt_oss.validation import check_fields, ranged

log = logging.getLogger(__name__)

# what a weights-only best.pt keeps of the training state: enough to load, export and describe
WEIGHTS_STATE = ("step", "best_val", "tokens_seen", "run_config", "vocabulary")
NAN_POLICIES = ("error", "skip")


@dataclass
class TrainerConfig:
    """How to train. batch_size is the global batch in sequences (all accumulation and ranks)."""

    max_steps: int = ranged(2000, "[1, inf)")
    batch_size: int = ranged(16, "[1, inf)")
    grad_accum: int = ranged(1, "[1, inf)")
    seq_len: int = ranged(512, "[1, inf)")
    eval_every: int = ranged(200, "[1, inf)")
    eval_batches: int = ranged(
        20, "[1, inf)"
    )  # validation windows per evaluation, in micro-batches
    checkpoint_every: int = ranged(500, "[1, inf)")
    # Disk: snapshots every checkpoint_every steps kept (last.pt is the newest; older ones are
    # checkpoints/step_N.pt hard links; 0 = none, no resume); best.pt as "weights" (model only:
    # generate, evaluate, export, init_from), "full" (resumable; a hard link when saved at the
    # step last.pt was) or "none". ddp/fsdp: best/ is always a full sharded checkpoint.
    checkpoint_keep: int = ranged(1, "[0, inf)")
    checkpoint_best: str = "weights"
    log_every: int = ranged(10, "[1, inf)")
    resume: str | None = (
        None  # a run dir, a checkpoint file, or "auto" (this run dir if it has one)
    )
    # A new run (step 0, fresh optimizer) from these weights: a run dir, a checkpoint or a
    # Hugging Face directory (fine-tuning); resume, when it finds a checkpoint, takes precedence.
    init_from: str | None = None
    device: str = "auto"  # auto = cuda when present, else cpu
    precision: str = "auto"  # auto = bf16 autocast on GPU, float32 on CPU
    compile: bool = False  # torch.compile each block and the chunked loss's softmax
    seed: int = ranged(1337, "[0, 4294967295]")  # numpy takes seeds below 2**32
    grad_clip: float = ranged(1.0, "[0, inf)")  # 0 disables clipping
    nan_policy: str = "error"  # error: stop, keep the last good checkpoint; skip: drop the step
    max_skipped_steps: int = ranged(10, "[0, inf)")
    parallel: str = "none"  # none | ddp | fsdp (launch with torchrun or SLURM, one process per GPU)
    activation_checkpointing: bool = False  # recompute each block in backward: memory for time
    meta_init: bool = False  # fsdp: build on the meta device, initialise only this rank's shards
    progress: bool = True
    # conf/debug/: train on the first N batches only, over and over (0 = off); profile the
    # first N steps with torch.profiler into <run dir>/profile/ (0 = off)
    overfit_batches: int = ranged(0, "[0, inf)")
    profile_steps: int = ranged(0, "[0, inf)")
    # CPU runs: intra-op threads; 0 = the cores free of other work (training/runtime.py)
    threads: int = ranged(0, "[0, inf)")

    def validate(self, world_size: int = 1) -> None:
        """Raise ConfigError naming the first impossible field: its declared range, then the
        checks across fields."""
        check_fields(self, "trainer")
        if self.batch_size % (self.grad_accum * world_size):
            raise ConfigError(
                f"trainer.batch_size={self.batch_size} is invalid: must be a multiple of "
                f"grad_accum ({self.grad_accum}) x processes ({world_size})"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"trainer.precision={self.precision!r} is invalid: valid are {PRECISIONS}"
            )
        if self.checkpoint_best not in CHECKPOINT_BEST:
            raise ConfigError(
                f"trainer.checkpoint_best={self.checkpoint_best!r} is invalid: "
                f"valid are {CHECKPOINT_BEST}"
            )
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(
                f"trainer.nan_policy={self.nan_policy!r} is invalid: valid are {NAN_POLICIES}"
            )
        self._validate_parallel(world_size)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise ConfigError(f"trainer.device={self.device!r} is invalid: {error}") from error

    def _validate_parallel(self, world_size: int) -> None:
        if self.parallel not in PARALLEL_MODES:
            raise ConfigError(
                f"trainer.parallel={self.parallel!r} is invalid: valid are {PARALLEL_MODES}"
            )
        if world_size > 1 and self.parallel == "none":
            raise ConfigError(
                f"trainer.parallel=none, but {world_size} processes were launched (torchrun or "
                "SLURM tasks): set trainer.parallel=ddp or fsdp, or launch one process"
            )
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError(
                "trainer.precision=fp16 is invalid with trainer.parallel=fsdp: use bf16"
            )
        if self.meta_init and self.parallel != "fsdp":
            raise ConfigError(
                f"trainer.meta_init=true needs trainer.parallel=fsdp, not {self.parallel!r}"
            )


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or the weights became NaN or infinite."""


class TrainBatches(Protocol):
    """The training stream the loop draws from: data.TrainLoader, bench's random tokens, a
    test's fake. Its state goes into every checkpoint, so a resumed run continues it exactly."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) int64, each (micro-batch of this rank, seq_len), on the device."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ValBatches(Protocol):
    """The fixed validation windows (data.ValLoader), scored at every evaluation."""

    # UTF-8 bytes per token of the split, for bits per byte; None: unknown (bpb is NaN)
    bytes_per_token: float | None
    num_target_tokens: int  # target tokens one pass scores, all ranks together

    def rank_batches(
        self, rank: int, world_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(inputs, targets, weight 0 or 1): this rank's share of every batch; the ranks
        together score each window once."""
        ...


def training_device(config: TrainerConfig, world: World) -> torch.device:
    """The device this rank trains on (and its loaders put batches on)."""
    return rank_device(resolve_device(config.device, "trainer.device"), world)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepStats:
    loss: float
    ce: float
    aux_loss: float
    z_loss: float
    grad_norm: float
    expert_counts: torch.Tensor  # (layers, experts)
    skipped: bool = False


class Trainer:
    """Owns one run: the model, optimizer, schedule, loaders and run directory."""

    def __init__(
        self,
        model: GptOss,
        optimizer_factory: Callable[[GptOss], torch.optim.Optimizer],
        schedule_factory: Callable[[torch.optim.Optimizer], Any],
        train_loader: TrainBatches,
        val_loader: ValBatches | None,
        config: TrainerConfig,
        run_dir: str | Path,
        logger: Any = None,
        run_config: dict | None = None,
        vocabulary: Vocabulary | None = None,
    ):
        """train_loader gives this rank's micro-batches of batch_size / grad_accum / processes
        sequences; val_loader None: no evaluation (and no `best` checkpoint), as in bench."""
        self.world = current_world()  # rank and size of the process group (one process without)
        config.validate(self.world.size)
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = training_device(config, self.world)
        self.threads = set_device_threads(self.device, config.threads)  # CPU only; before any work
        precision = resolve_precision(config.precision, self.device, "trainer.precision")
        self.dtype = autocast_dtype(precision)  # None: float32, no autocast
        self.model = place_model(model, self.device, config.parallel)
        if config.activation_checkpointing:
            checkpoint_blocks(self.model)
        if config.compile:
            for block in self.model.layers:
                block.compile()
        self.loss_fn = parallelize(
            self.model, config.parallel, self.device, compiled=config.compile
        )  # model.loss, DDP or FSDP
        self.optimizer = optimizer_factory(self.model)
        self.schedule = schedule_factory(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.train_loader, self.val_loader = train_loader, val_loader
        if config.overfit_batches:  # the loader's first N batches, over and over
            self.train_loader = RepeatedBatches(train_loader, config.overfit_batches)
        micro = config.batch_size // config.grad_accum // self.world.size
        self.batch_shape = (micro, config.seq_len)  # what train_loader must give
        self.logger = (logger or NullLogger()) if self.world.is_main else NullLogger()
        self.run_config = run_config or {}
        # the map from o200k ids to the model's ids, stored in every checkpoint
        self.vocabulary = vocabulary
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl")
        self.step, self.best_val, self.skipped, self.tokens_seen = 0, math.inf, 0, 0
        self.saved_steps: dict[str, int] = {}  # checkpoint name -> step, written by this process
        self.stopped_by: str | None = None  # the signal that ended fit() early
        self.counts_since_eval: torch.Tensor | None = None  # (layers, experts), for the loggers
        self.flops_per_token = flops_per_token(model.config, config.seq_len)
        self.peak = None
        self.eval_seconds = 0.0  # wall time spent in validation (its share goes in the summary)
        self.resumed_from: Path | None = None  # the checkpoint restored, once resume() ran
        self._started, self._run_id = False, None

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train to max_steps (resuming first if asked); returns the summary."""
        self.resume()
        self.logger.start(self.run_dir, self.run_config, run_id=self._run_id, step=self.step)
        if self.world.is_main:  # for MFU; on a CPU a timed matmul: before the clock starts
            self.peak = peak_flops(self.device, self.dtype or torch.float32) * self.world.size
        preview = self._preview()
        started, last_log = time.perf_counter(), (time.perf_counter(), self.step)
        bar = tqdm(
            total=self.config.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (self.config.progress and self.world.is_main),
            mininterval=1.0,
            dynamic_ncols=True,
        )
        profile_steps = self.config.profile_steps if self.world.is_main else 0
        profiler = StepProfiler(profile_steps, self.run_dir / "profile", self.device)
        with StopRequest() as stop:  # SIGTERM, SIGINT, SIGUSR1: end after a whole step
            while self.step < self.config.max_steps:
                if preview is not None:  # a sign of life while the (maybe minutes-long) step 1 runs
                    with Heartbeat(first_step_report(bar, preview.step_s)):
                        stats = self.train_step()
                    preview = None
                else:
                    stats = self.train_step()
                self._note_expert_counts(stats.expert_counts)
                profiler.step()
                self.step += 1
                self.tokens_seen += self.config.batch_size * self.config.seq_len
                bar.update(1)
                if self.step % self.config.log_every == 0 or self.step == 1:
                    last_log = self._log_train(stats, last_log, bar)
                if self._maybe_evaluate_and_save():  # tokens/s counts training time only
                    last_log = (time.perf_counter(), self.step)
                if self.step < self.config.max_steps and (signum := stop.agreed(self.device)):
                    self._stop(signum)
                    break
            bar.close()
            profiler.close()
            summary = self._summary(time.perf_counter() - started)
            self.logger.summary(summary)
            # a stopped run is not finished (W&B marks it so); a second Ctrl-C still exits at once
            self.logger.finish(exit_code=exit_status(self.stopped_by) if self.stopped_by else 0)
        return summary

    def _maybe_evaluate_and_save(self) -> bool:
        """Evaluate and checkpoint when due; True if anything was done."""
        cfg, final = self.config, self.step == self.config.max_steps
        evaluate = (self.step % cfg.eval_every == 0 or final) and self.val_loader is not None
        save = (self.step % cfg.checkpoint_every == 0 or final) and cfg.checkpoint_keep > 0
        improved = False
        if evaluate:
            began = time.perf_counter()
            val = self.evaluate()
            self.eval_seconds += time.perf_counter() - began
            if val["loss"] < self.best_val:
                self.best_val, improved = val["loss"], True
        if save:
            self.save_finite("last")
            if cfg.checkpoint_keep > 1 and self.world.is_main:
                sharded = cfg.parallel != "none"
                keep_snapshot(self.run_dir / "checkpoints", self.step, cfg.checkpoint_keep, sharded)
        if improved:
            self.save_best(same_step_as_last=save)
        return evaluate or save

    def _preview(self) -> CpuPreview | None:
        """A one-process CPU run: log the estimated step time, total time and peak memory."""
        if self.device.type != "cpu" or self.world.size > 1 or self.step >= self.config.max_steps:
            return None
        steps = self.config.max_steps - self.step
        return preview_cpu_run(
            self.model.config,
            self.config.batch_size,
            self.config.seq_len,
            steps,
            self.dtype,
            self._one_random_sequence,
            self.threads,
            self.config.grad_accum,
            self.optimizer,
        )

    def _one_random_sequence(self) -> None:
        """Forward and backward of one sequence of random tokens, as a step runs them; the
        gradients are dropped and the global RNG is not used (resuming stays exact)."""
        generator = torch.Generator().manual_seed(0)
        shape = (1, self.config.seq_len)
        tokens = torch.randint(0, self.model.config.vocab_size, shape, generator=generator)
        with self._autocast():
            out = self.loss_fn(tokens.to(self.device), tokens.roll(-1, 1).to(self.device))
        out.loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def save_best(self, same_step_as_last: bool) -> None:
        """checkpoints/best as trainer.checkpoint_best says: weights only, the full state (a
        hard link to last when that was saved at this step), or nothing."""
        mode, folder = self.config.checkpoint_best, self.run_dir / "checkpoints"
        sharded = self.config.parallel != "none"
        if mode == "none":
            return
        if mode == "weights" and not sharded:
            self.check_finite("best")
            state = {k: v for k, v in self._training_state().items() if k in WEIGHTS_STATE}
            path = save_checkpoint(folder / "best.pt", self.model, **state)
        elif same_step_as_last:  # last was checked finite as it was written
            if not self.world.is_main:  # the other ranks never read best/
                return
            name = "{}" if sharded else "{}.pt"
            path = link_checkpoint(folder / name.format("last"), folder / name.format("best"))
        else:
            self.save_finite("best")  # logs the checkpoint itself
            return
        self.saved_steps["best"] = self.step
        self.logger.log_checkpoint(path, "best", step=self.step)  # W&B artifacts, when asked for

    def save_finite(self, name: str) -> None:
        """save(name), unless a weight or optimizer state holds NaN or inf on any rank: then
        nothing is written and TrainingDiverged names the tensors and the checkpoint kept."""
        self.check_finite(name)
        self.save(name)
        self.saved_steps[name] = self.step

    def check_finite(self, name: str) -> None:
        """TrainingDiverged, before checkpoints/<name> is written, when a weight or optimizer
        state holds NaN or inf on any rank."""
        bad = non_finite_tensors(self.model, self.optimizer)
        if sum_over_ranks_(torch.tensor([len(bad)], device=self.device)).item():
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise TrainingDiverged(
                f"after step {self.step}, {len(bad) or 'some'} tensor(s) of the weights and "
                f"optimizer state are not finite ({shown or 'on another rank'}); training "
                f"stopped without writing checkpoints/{name}: {self._kept()}"
            )

    def _stop(self, signum: int) -> None:
        """A stop signal (agreed by every rank): `last` holds this step, the summary says why."""
        self.stopped_by = signal.Signals(signum).name
        log.warning(
            "%s: stopping after step %d of %d", self.stopped_by, self.step, self.config.max_steps
        )
        if self.saved_steps.get("last") != self.step:
            self.save_finite("last")

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train_step(self) -> StepStats:
        """One optimizer step over grad_accum micro-batches."""
        self.model.train()
        accum = self.config.grad_accum
        totals = torch.zeros(4, device=self.device)  # loss, ce, aux, z
        counts = None
        for micro in range(accum):
            inputs, targets = self._next_batch()
            with self._autocast(), grad_sync(self.loss_fn, micro == accum - 1):
                out = self.loss_fn(inputs, targets)
            self.scaler.scale(out.loss / accum).backward()
            totals += (
                torch.stack([out.loss.detach(), out.ce, out.aux_loss, out.z_loss]).float() / accum
            )
            counts = out.expert_counts if counts is None else counts + out.expert_counts
        mean_over_ranks_(totals)  # every rank reports (and judges finiteness by) the global values
        sum_over_ranks_(counts)  # so every rank nudges its selection biases identically
        loss, ce, aux, z = totals.tolist()
        if not math.isfinite(loss):
            stats = StepStats(loss, ce, aux, z, math.nan, counts)
            return self._non_finite(f"the loss is {loss}", stats)
        self.scaler.unscale_(self.optimizer)
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        # the same on every rank (DDP's gradients are all-reduced, FSDP's norm is global)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            # Before the optimizer applies it: a finite loss can still have NaN gradients, and
            # one such step makes every weight it touches NaN. (fp16's scaler skips such steps
            # itself and lowers its scale: overflow there is routine, not divergence.)
            reason = f"the gradient norm is {grad_norm}"
            return self._non_finite(reason, StepStats(loss, ce, aux, z, grad_norm, counts))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if (
            self.device.type == "cpu"
        ):  # once the optimizer state exists: see gpt_oss/training/runtime.py
            keep_freed_memory()
        self.schedule.step()
        self.model.update_selection_bias(counts)
        return StepStats(loss, ce, aux, z, grad_norm, counts)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.train_loader.next_batch()
        if tuple(inputs.shape) != self.batch_shape or targets.shape != inputs.shape:
            raise ValueError(
                f"the train loader gave inputs {tuple(inputs.shape)} and targets "
                f"{tuple(targets.shape)}; this trainer needs {self.batch_shape} each (batch_size "
                f"{self.config.batch_size} / grad_accum {self.config.grad_accum} / "
                f"{self.world.size} processes, seq_len {self.config.seq_len})"
            )
        return inputs, targets

    def _non_finite(self, reason: str, stats: StepStats) -> StepStats:
        """A step whose loss or gradient norm is not finite: its gradients are dropped before
        the optimizer sees them; then skip it (nan_policy=skip) or stop."""
        step = self.step + 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.nan_policy == "skip" and self.skipped < self.config.max_skipped_steps:
            self.skipped += 1
            log.warning(
                "%s at step %d: step skipped, weights unchanged (%d of "
                "trainer.max_skipped_steps=%d)",
                reason, step, self.skipped, self.config.max_skipped_steps,
            )  # fmt: skip
            self.schedule.step()
            return dataclasses.replace(stats, skipped=True)
        policy = (
            f"after {self.skipped} skipped steps (trainer.max_skipped_steps)"
            if self.config.nan_policy == "skip"
            else "(trainer.nan_policy=error)"
        )
        raise TrainingDiverged(
            f"{reason} at step {step}; training stopped {policy} before the optimizer applied "
            f"it: {self._kept()}"
        )

    def _kept(self) -> str:
        """What a diverged run leaves: the `last` checkpoint and, when this process wrote it,
        its step (every checkpoint is checked finite before it is written)."""
        sharded = self.config.parallel != "none"
        last = find_checkpoint(self.run_dir / "checkpoints", ("last",), sharded)
        if last is None:
            return "no checkpoint was written"
        step = self.saved_steps.get("last")
        at = f" (step {step})" if step is not None else ""
        return (
            f"the last checkpoint {last}{at} holds finite weights; resume from it with a lower "
            "optimizer.lr, or set trainer.nan_policy=skip"
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and bits per byte over the fixed validation windows."""
        self.model.eval()
        loss_sum = 0.0
        batches = self.val_loader.rank_batches(self.world.rank, self.world.size)
        for inputs, targets, weight in batches:  # this rank's share
            with self._autocast():
                out = self.model.loss(inputs, targets)
            loss_sum += out.ce.item() * targets.numel() * weight
        (loss_sum,) = sum_floats((loss_sum,), self.device)
        tokens = self.val_loader.num_target_tokens  # all ranks' shares together
        loss = loss_sum / tokens
        bytes_per_token = self.val_loader.bytes_per_token
        num_bytes = math.nan if bytes_per_token is None else tokens * bytes_per_token
        result = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "bpb": bits_per_byte(loss_sum, num_bytes),
        }
        if not self.world.is_main:
            return result
        record = {"step": self.step, "split": "val", **result, "tokens": self.tokens_seen}
        self.metrics.write(record)
        self.logger.log({f"val/{k}": v for k, v in result.items()}, step=self.step)
        plot = plot_losses(self.metrics.read(), self.run_dir / "loss.png", title=self.run_dir.name)
        self.logger.log_image("loss_curve", plot, step=self.step)
        if self.counts_since_eval is not None:  # one table per evaluation, not a scalar per expert
            self.logger.log_expert_load(expert_load(self.counts_since_eval), step=self.step)
            self.counts_since_eval = None
        return result

    def _note_expert_counts(self, counts: torch.Tensor) -> None:
        """Add a step's (layers, experts) assignment counts to those since the last evaluation."""
        if self.counts_since_eval is None:
            self.counts_since_eval = counts.detach().clone()
        else:
            self.counts_since_eval += counts

    def _log_train(self, stats: StepStats, last_log: tuple[float, int], bar) -> tuple[float, int]:
        now = time.perf_counter()
        if not self.world.is_main:
            return now, self.step
        steps = self.step - last_log[1]
        tokens_per_s = (
            steps * self.config.batch_size * self.config.seq_len / max(now - last_log[0], 1e-9)
        )
        record = {
            "step": self.step,
            "split": "train",
            "loss": stats.ce,
            "total_loss": stats.loss,
            "aux_loss": stats.aux_loss,
            "z_loss": stats.z_loss,
            "grad_norm": stats.grad_norm,
            "lr": self.schedule.get_last_lr()[0],
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * self.flops_per_token / self.peak,
            "skipped_steps": self.skipped,
            "expert_load": expert_load(stats.expert_counts),
        }
        self.metrics.write(record)
        flat = {
            f"train/{k}": v for k, v in record.items() if k not in ("step", "split", "expert_load")
        }
        self.logger.log(flat, step=self.step)  # expert load: per evaluation (log_expert_load)
        bar.set_postfix(loss=f"{stats.ce:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        return now, self.step

    # ----------------------------------------------------------- checkpoints
    def save(self, name: str) -> Path:
        """Atomically write checkpoints/<name>.pt (ddp/fsdp: the sharded checkpoints/<name>/)
        with everything needed to continue exactly."""
        folder, state = self.run_dir / "checkpoints", self._training_state()
        if self.config.parallel != "none":
            path = save_sharded(folder / name, self.model, self.optimizer, state)
        else:
            optimizer = self.optimizer.state_dict()
            path = save_checkpoint(folder / f"{name}.pt", self.model, optimizer=optimizer, **state)
        self.logger.log_checkpoint(path, name, step=self.step)  # W&B artifacts, when asked for
        return path

    def _training_state(self) -> dict[str, Any]:
        """Everything but weights and optimizer moments: tensors and plain values only."""
        return {
            "optimizer_name": optimizer_name(self.optimizer),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_val": self.best_val,
            "skipped": self.skipped,
            "tokens_seen": self.tokens_seen,
            "rng": capture_rng(),
            "data": self.train_loader.state_dict(),
            "wandb_run_id": self.logger.run_id,
            "run_config": self.run_config,
            "vocabulary": self.vocabulary.to_dict() if self.vocabulary is not None else None,
        }

    def resume(self) -> Path | None:
        """The start of a run, once: seed, remove the temporaries of killed saves, and restore
        the checkpoint trainer.resume names (returned; None for a fresh start). fit() calls it
        when the caller has not (train.py calls it first, before writing the run directory)."""
        if self._started:
            return self.resumed_from
        self._started = True
        seed_everything(self.config.seed)
        if self.world.is_main:
            remove_stale_temporaries(self.run_dir / "checkpoints")
        if self.config.resume:
            sharded = self.config.parallel != "none"
            path = resolve_resume(self.config.resume, self.run_dir, sharded)
            if path is None:
                log.info(
                    "trainer.resume=auto: no checkpoint in %s yet, starting fresh", self.run_dir
                )
            else:
                self.restore(path)
        return self.resumed_from

    def restore(self, path: Path) -> None:
        """Load model, optimizer, schedule, scaler, RNG and data position from a checkpoint,
        after checking that it fits this run (CheckpointError naming what differs); the metrics
        history is carried over last, so a refused checkpoint changes no file."""
        sharded = self.config.parallel != "none"
        payload = read_trainer_state(path) if sharded else read_checkpoint(path)
        check_resumable(path, payload, self.model.config, optimizer_name(self.optimizer))
        check_vocabulary(path, payload, self.vocabulary)
        if sharded:
            load_sharded(path, self.model, self.optimizer, payload)
        else:
            self.model.load_state_dict(payload["model"])
            load_optimizer_state(self.optimizer, payload["optimizer"], path)
        self.schedule.load_state_dict(payload["schedule"])
        self.scaler.load_state_dict(payload["scaler"])
        self.train_loader.load_state_dict(payload["data"])
        restore_rng(payload["rng"])
        self.step, self.best_val = payload["step"], payload["best_val"]
        self.skipped, self.tokens_seen = payload["skipped"], payload["tokens_seen"]
        self._run_id = payload.get("wandb_run_id")
        self._apply_schedule_change(payload.get("run_config") or {})
        if self.world.is_main:
            self._carry_metrics(path)
        self.resumed_from = path
        log.info("resumed from %s at step %d", path, self.step)

    def _apply_schedule_change(self, saved_run_config: dict[str, Any]) -> None:
        """A schedule redefined over another length sets the learning rate of the resumed step
        from the new schedule now, not one step late."""
        change = schedule_change(saved_run_config, self.run_config)
        if change is None:
            return
        log.info("%s", change)
        if isinstance(self.schedule, torch.optim.lr_scheduler.LambdaLR):
            epoch, factors = self.schedule.last_epoch, self.schedule.lr_lambdas
            lrs = [base * f(epoch) for base, f in zip(self.schedule.base_lrs, factors, strict=True)]
            for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            self.schedule._last_lr = lrs

    def _carry_metrics(self, checkpoint: Path) -> None:
        """The metrics history up to the checkpoint's step, wherever this run writes."""
        source = checkpoint.parent.parent / "metrics.jsonl"
        if source.resolve() == self.metrics.path.resolve():
            self.metrics.truncate_after(self.step)
            return
        for record in read_metrics(source):
            if record.get("step", 0) <= self.step:
                self.metrics.write(record)

    def _summary(self, seconds: float) -> dict[str, Any]:
        records = self.metrics.read()
        val = [r for r in records if r.get("split") == "val"]
        train = [r for r in records if r.get("split") == "train"]
        return {
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "seconds": seconds,
            "eval_seconds": self.eval_seconds,  # validation's part of `seconds`
            "best_val_loss": min((r["loss"] for r in val), default=math.nan),
            "best_val_bpb": min((r["bpb"] for r in val), default=math.nan),
            "final_val_loss": val[-1]["loss"] if val else math.nan,
            "final_val_bpb": val[-1]["bpb"] if val else math.nan,
            "final_train_loss": train[-1]["loss"] if train else math.nan,
            "tokens_per_s": train[-1]["tokens_per_s"] if train else math.nan,
            "skipped_steps": self.skipped,
            "max_steps": self.config.max_steps,
            "stopped_by": self.stopped_by,  # None, or the signal that stopped the run early
            "run_dir": str(self.run_dir),
            "checkpoints": str(self.run_dir / "checkpoints"),
            "sharded_checkpoints": self.config.parallel != "none",  # last/ and best/ directories
            "plot": str(self.run_dir / "loss.png"),
        }


def non_finite_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of this rank's parameters, buffers and optimizer state tensors (its shards under
    FSDP) that hold a NaN or an infinity; [] when all are finite."""
    names = {id(p): name for name, p in model.named_parameters()}
    named = [*model.named_parameters(), *model.named_buffers()]
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value):
                named.append((f"optimizer state {key} of {names.get(id(param), '?')}", value))
    local = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in named]
    floating = [(n, t) for n, t in local if t.is_floating_point() and t.numel()]
    if not floating:
        return []
    device = floating[0][1].device  # one transfer for all the flags, not one per tensor
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in floating]).tolist()
    return [name for (name, _), ok in zip(floating, finite, strict=True) if not ok]


def expert_load(counts: torch.Tensor) -> list[list[float]]:
    """Per layer, each expert's share of the token assignments (1/E each when balanced)."""
    counts = counts.float()
    return (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).tolist()


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run report a person reads."""
    minutes = summary["seconds"] / 60
    done = f"finished {summary['steps']} steps"
    if summary.get("stopped_by"):
        done = f"stopped by {summary['stopped_by']} after step {summary['steps']}"
        done += f" of {summary['max_steps']}"
    return "\n".join(
        [
            "",
            "=" * 64,
            f"  {done}, {summary['tokens_seen']:,} tokens in {minutes:.1f} min"
            f" ({summary['tokens_per_s']:,.0f} tokens/s at the end)",
            f"  best val loss {summary['best_val_loss']:.4f}, "
            f"final val loss {summary['final_val_loss']:.4f}"
            f" ({summary['final_val_bpb']:.4f} bits/byte); "
            f"final train loss {summary['final_train_loss']:.4f}",
            f"  validation: {summary.get('eval_seconds', 0.0):.0f} s of the run's "
            f"{summary['seconds']:.0f} s "
            f"({100 * summary.get('eval_seconds', 0.0) / max(summary['seconds'], 1e-9):.0f}%)",
            f"  skipped steps: {summary['skipped_steps']}",
            f"  run dir:     {summary['run_dir']}",
            f"  checkpoints: {summary['checkpoints']}/{{last,best}}"
            f"{'/' if summary.get('sharded_checkpoints') else '.pt'}",
            f"  loss plot:   {summary['plot']}",
            "=" * 64,
        ]
    )
