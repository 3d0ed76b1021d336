"""The training loop: steps, evaluation, checkpoints, resume, metrics, plots, summary."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gpt_oss.data.loaders import TrainLoader, ValLoader
from gpt_oss.model.config import IMPLEMENTATION_FIELDS, ConfigError, resolve_device
from gpt_oss.model.hf import CheckpointError
from gpt_oss.model.model import GptOss
from gpt_oss.model.precision import PRECISIONS, autocast_dtype, resolve_precision
from gpt_oss.model.vocabulary import Vocabulary
from gpt_oss.studies.plots import plot_losses
from gpt_oss.training.checkpoint import checkpoint_vocabulary, read_checkpoint, save_checkpoint
from gpt_oss.training.cpu_preview import CpuPreview, Heartbeat, first_step_report, preview_cpu_run
from gpt_oss.training.debugging import RepeatedBatches, StepProfiler
from gpt_oss.training.distributed import (
    PARALLEL_MODES,
    checkpoint_blocks,
    current_world,
    grad_sync,
    load_sharded,
    mean_over_ranks_,
    parallelize,
    place_model,
    rank_device,
    read_trainer_state,
    save_sharded,
    sharded_checkpoint,
    sum_floats,
    sum_over_ranks_,
)
from gpt_oss.training.metrics import bits_per_byte, flops_per_token, peak_flops
from gpt_oss.training.runtime import keep_freed_memory, set_device_threads
from gpt_oss.training.tracking import MetricsFile, NullLogger, read_metrics
from gpt_oss.validation import check_fields, ranged

log = logging.getLogger(__name__)

NAN_POLICIES = ("error", "skip")


@dataclass
class TrainerConfig:
    """How to train. batch_size is the global batch in sequences (all accumulation and ranks)."""

    max_steps: int = ranged(2000, "[1, inf)")
    batch_size: int = ranged(16, "[1, inf)")
    grad_accum: int = ranged(1, "[1, inf)")
    seq_len: int = ranged(512, "[1, inf)")
    eval_every: int = ranged(200, "[1, inf)")
    eval_batches: int = ranged(20, "[1, inf)")  # validation windows per evaluation, in micro-batches
    checkpoint_every: int = ranged(500, "[1, inf)")
    log_every: int = ranged(10, "[1, inf)")
    resume: str | None = (
        None  # a run dir, a checkpoint file, or "auto" (this run dir if it has one)
    )
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
    """The loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        optimizer_factory: Callable,
        schedule_factory: Callable,
        data: Any,
        config: TrainerConfig,
        run_dir: str | Path,
        logger: Any = None,
        run_config: dict | None = None,
        vocabulary: Vocabulary | None = None,
    ):
        self.world = current_world()  # rank and size of the process group (one process without)
        config.validate(self.world.size)
        self.config, self.data = config, data
        self.run_dir = Path(run_dir)
        self.device = rank_device(resolve_device(config.device, "trainer.device"), self.world)
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
        micro = config.batch_size // config.grad_accum  # over all ranks; each takes its share
        self.train_loader = TrainLoader(
            data.train.tokens,
            micro // self.world.size,
            config.seq_len,
            config.seed,
            device=self.device,
            rank=self.world.rank,
            world_size=self.world.size,
        )
        if config.overfit_batches:
            self.train_loader = RepeatedBatches(self.train_loader, config.overfit_batches)
        self.val_loader = ValLoader(
            data.val.tokens,
            micro,
            config.seq_len,
            max_batches=config.eval_batches,
            device=self.device,
        )
        self.logger = (logger or NullLogger()) if self.world.is_main else NullLogger()
        self.run_config = run_config or {}
        # the map from o200k ids to the model's ids, stored in every checkpoint
        self.vocabulary = vocabulary if vocabulary is not None else getattr(data, "vocabulary", None)
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl")
        self.step, self.best_val, self.skipped, self.tokens_seen = 0, math.inf, 0, 0
        self.counts_since_eval: torch.Tensor | None = None  # (layers, experts), for the loggers
        self.flops_per_token = flops_per_token(model.config, config.seq_len)
        self.peak = None
        self.eval_seconds = 0.0  # wall time spent in validation (its share goes in the summary)

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train to max_steps (resuming first if asked); returns the summary."""
        seed_everything(self.config.seed)
        run_id = self._maybe_resume()
        self.logger.start(self.run_dir, self.run_config, run_id=run_id, step=self.step)
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
        bar.close()
        profiler.close()
        summary = self._summary(time.perf_counter() - started)
        self.logger.summary(summary)
        self.logger.finish()
        return summary

    def _maybe_evaluate_and_save(self) -> bool:
        """Evaluate and checkpoint when due; True if anything was done."""
        cfg, final = self.config, self.step == self.config.max_steps
        evaluate = self.step % cfg.eval_every == 0 or final
        save = self.step % cfg.checkpoint_every == 0 or final
        if evaluate:
            began = time.perf_counter()
            val = self.evaluate()
            self.eval_seconds += time.perf_counter() - began
            if val["loss"] < self.best_val:
                self.best_val = val["loss"]
                self.save("best")
        if save:
            self.save("last")
        return evaluate or save

    def _preview(self) -> CpuPreview | None:
        """A one-process CPU run: log the estimated step time, total time and peak memory."""
        if self.device.type != "cpu" or self.world.size > 1 or self.step >= self.config.max_steps:
            return None
        steps = self.config.max_steps - self.step
        return preview_cpu_run(self.model.config, self.config.batch_size, self.config.seq_len,
                               steps, self.dtype, self._one_random_sequence, self.threads)

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
            inputs, targets = self.train_loader.next_batch()
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
            return self._non_finite(loss, counts, ce, aux, z)
        self.scaler.unscale_(self.optimizer)
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cpu":  # once the optimizer state exists: see gpt_oss/training/runtime.py
            keep_freed_memory()
        self.schedule.step()
        self.model.update_selection_bias(counts)
        return StepStats(loss, ce, aux, z, grad_norm, counts)

    def _non_finite(self, loss: float, counts, ce, aux, z) -> StepStats:
        step = self.step + 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.nan_policy == "skip" and self.skipped < self.config.max_skipped_steps:
            self.skipped += 1
            log.warning("loss is %s at step %d: step skipped (%d so far)", loss, step, self.skipped)
            self.schedule.step()
            return StepStats(loss, ce, aux, z, math.nan, counts, skipped=True)
        last = _last_checkpoint(self.run_dir / "checkpoints", self.config.parallel != "none")
        kept = f"the last good checkpoint is kept at {last}" if last else "no checkpoint was written"
        raise TrainingDiverged(f"loss is {loss} at step {step}; training stopped, {kept}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and bits per byte over the fixed validation windows."""
        self.model.eval()
        loss_sum = 0.0
        for inputs, targets, weight in self.val_loader.rank_batches(
            self.world.rank, self.world.size
        ):  # this rank's share
            with self._autocast():
                out = self.model.loss(inputs, targets)
            loss_sum += out.ce.item() * targets.numel() * weight
        (loss_sum,) = sum_floats((loss_sum,), self.device)
        tokens = self.val_loader.num_target_tokens  # all ranks' shares together
        loss = loss_sum / tokens
        num_bytes = (
            tokens * self.data.val.num_bytes / len(self.data.val)
        )  # bytes per token of this split
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
        state = dict(
            schedule=self.schedule.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.step,
            best_val=self.best_val,
            skipped=self.skipped,
            tokens_seen=self.tokens_seen,
            rng=rng_state(),
            data=self.train_loader.state_dict(),
            wandb_run_id=self.logger.run_id,
            run_config=self.run_config,
            vocabulary=self.vocabulary.to_dict() if self.vocabulary is not None else None,
        )
        folder = self.run_dir / "checkpoints"
        if self.config.parallel != "none":
            path = save_sharded(folder / name, self.model, self.optimizer, state)
        else:
            path = save_checkpoint(
                folder / f"{name}.pt", self.model, optimizer=self.optimizer.state_dict(), **state
            )
        self.logger.log_checkpoint(path, name, step=self.step)  # W&B artifacts, when asked for
        return path

    def _maybe_resume(self) -> str | None:
        source = self.config.resume
        if not source:
            return None
        path = resume_checkpoint(source, self.run_dir, sharded=self.config.parallel != "none")
        if path is None:
            log.info("trainer.resume=auto: no checkpoint in %s yet, starting fresh", self.run_dir)
            return None
        self.restore(path)
        return self._run_id

    def restore(self, path: Path) -> None:
        """Load model, optimizer, schedule, scaler, RNG and data position from a checkpoint."""
        payload = self._read_resumable(path)
        if self.config.parallel != "none":
            load_sharded(path, self.model, self.optimizer)
        else:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.scaler.load_state_dict(payload["scaler"])
        self.train_loader.load_state_dict(payload["data"])
        set_rng_state(payload["rng"])
        self.step, self.best_val = payload["step"], payload["best_val"]
        self.skipped, self.tokens_seen = payload["skipped"], payload["tokens_seen"]
        self._run_id = payload.get("wandb_run_id")
        if self.world.is_main:
            self._carry_metrics(path)
        log.info("resumed from %s at step %d", path, self.step)

    def _read_resumable(self, path: Path) -> dict[str, Any]:
        """The checkpoint's payload (a sharded one's training state), checked to fit this run."""
        sharded = self.config.parallel != "none"
        if path.is_dir() and not sharded:
            raise CheckpointError(
                f"{path} is a sharded checkpoint (trainer.parallel=ddp or fsdp): resume it with "
                "trainer.parallel=ddp or fsdp and as many processes, or take its weights with "
                "`python -m gpt_oss.consolidate`"
            )
        if sharded and not path.is_dir():
            raise CheckpointError(
                f"{path} is a single-process checkpoint: trainer.parallel={self.config.parallel} resumes "
                "sharded checkpoint directories (checkpoints/last/); resume it with trainer.parallel=none"
            )
        payload = (
            read_trainer_state(path) if sharded else read_checkpoint(path, map_location="cpu")
        )
        if "optimizer" not in payload and not sharded:
            raise CheckpointError(
                f"{path} holds weights only (consolidated): it cannot resume training"
            )
        diff = {
            k: (v, payload["model_config"].get(k))
            for k, v in self.model.config.to_dict().items()
            if payload["model_config"].get(k) != v and k not in IMPLEMENTATION_FIELDS
        }
        if diff:
            raise CheckpointError(
                f"{path} was trained with another model config: (now, checkpoint) = {diff}"
            )
        if (saved := checkpoint_vocabulary(payload, path)) != self.vocabulary:
            raise CheckpointError(
                f"{path} was trained with another vocabulary ({saved!r}) than this run's data "
                f"gives ({self.vocabulary!r}): its ids mean other tokens"
            )
        return payload

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
            "run_dir": str(self.run_dir),
            "checkpoints": str(self.run_dir / "checkpoints"),
            "sharded_checkpoints": self.config.parallel != "none",  # last/ and best/ directories
            "plot": str(self.run_dir / "loss.png"),
        }


def expert_load(counts: torch.Tensor) -> list[list[float]]:
    """Per layer, each expert's share of the token assignments (1/E each when balanced)."""
    counts = counts.float()
    return (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).tolist()


def resume_checkpoint(source: str, run_dir: Path, sharded: bool = False) -> Path | None:
    """The checkpoint to resume from: a file, a run dir's last.pt, or 'auto' for this run dir.
    sharded (ddp/fsdp runs): checkpoint directories, a run dir's checkpoints/last/."""
    if source == "auto":
        return _last_checkpoint(run_dir / "checkpoints", sharded)
    path = Path(source)
    if path.is_file():
        return path
    if found := sharded_checkpoint(path):
        return found
    for folder in (path / "checkpoints", path):
        if found := _last_checkpoint(folder, sharded):
            return found
    last = "checkpoints/last/" if sharded else "checkpoints/last.pt"
    raise CheckpointError(
        f"trainer.resume={source!r}: no checkpoint there; give a run directory with {last}, "
        "a checkpoint, or 'auto'"
    )


def _last_checkpoint(folder: Path, sharded: bool) -> Path | None:
    if sharded:
        return sharded_checkpoint(folder / "last")
    candidate = folder / "last.pt"
    return candidate if candidate.is_file() else None


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run report a person reads."""
    minutes = summary["seconds"] / 60
    return "\n".join(
        [
            "",
            "=" * 64,
            f"  finished {summary['steps']} steps, {summary['tokens_seen']:,} tokens in {minutes:.1f} min"
            f" ({summary['tokens_per_s']:,.0f} tokens/s at the end)",
            f"  best val loss {summary['best_val_loss']:.4f}, final val loss {summary['final_val_loss']:.4f}"
            f" ({summary['final_val_bpb']:.4f} bits/byte); final train loss {summary['final_train_loss']:.4f}",
            f"  validation: {summary.get('eval_seconds', 0.0):.0f} s of the run's {summary['seconds']:.0f} s"
            f" ({100 * summary.get('eval_seconds', 0.0) / max(summary['seconds'], 1e-9):.0f}%)",
            f"  skipped steps: {summary['skipped_steps']}",
            f"  run dir:     {summary['run_dir']}",
            f"  checkpoints: {summary['checkpoints']}/{{last,best}}{'/' if summary.get('sharded_checkpoints') else '.pt'}",
            f"  loss plot:   {summary['plot']}",
            "=" * 64,
        ]
    )
