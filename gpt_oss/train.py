"""Entry point: `python -m gpt_oss.train [overrides]` (and `-m` for sweeps).

Thin by design: compose (Hydra), validate everything, then hand the instantiated parts to the
library's Trainer. Every error that a config can cause is raised before data preparation or
training starts.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from gpt_oss import schema
from gpt_oss.data.loaders import TrainLoader, ValLoader
from gpt_oss.data.prepare import prepare_data
from gpt_oss.model.config import ConfigError
from gpt_oss.model.hf import CheckpointError
from gpt_oss.model.model import build_model
from gpt_oss.schema import build, make
from gpt_oss.training import distributed

if TYPE_CHECKING:
    from gpt_oss.data.prepare import PreparedData
    from gpt_oss.training.trainer import TrainerConfig

log = logging.getLogger("gpt_oss.train")
schema.register()


def job_identity(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(W&B group, run name): a sweep shares one group; a run is named by its overrides."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    overrides = hc.job.override_dirname or None
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)  # outputs/multirun/<date>/<time>: both parts, unique per sweep
        return f"{cfg.name}-{sweep.parent.name}-{sweep.name}", overrides or f"job{hc.job.num}"
    return None, overrides


def provenance() -> dict[str, Any]:
    """Versions and git commit, so a run directory says what produced it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"torch": str(torch.__version__), "python": sys.version.split()[0], "git_commit": commit}


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate, prepare data, build, train; returns the trainer's summary.

    With trainer.parallel=ddp|fsdp every process that torchrun or SLURM started runs this; they
    join one process group and train in rank 0's run directory, which rank 0 alone writes.
    """
    from gpt_oss.model.config import resolve_device

    parts = build(cfg)
    trainer_config = parts["trainer_config"]
    with distributed.process_group(trainer_config.parallel, resolve_device(trainer_config.device, "trainer.device")) as world:
        run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's ${now:...} wins
        if not world.is_main:
            _drop_log_files()
        return _train(cfg, parts, run_dir, world)


def _train(cfg: DictConfig, parts: dict[str, Any], run_dir: Path, world: distributed.World) -> dict[str, Any]:
    from gpt_oss.model.size import parameter_counts
    from gpt_oss.training.trainer import Trainer, format_summary, seed_everything

    group, name = job_identity(cfg)
    logger = make(cfg.logger, "logger", **_missing_identity(cfg.logger, group, name))
    data = prepare_data(parts["data_config"], world)  # rank 0 first, then the others
    seed_everything(parts["trainer_config"].seed)
    model = build_model(parts["model_config"], meta=parts["trainer_config"].meta_init)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config["data"]["fallback"] = data.fallback  # None, or why TinyStories was replaced
    run_config["data_prepared"] = data.summary()  # what was actually read: source, sizes, sha256
    if data.fallback and hasattr(logger, "tags"):
        logger.tags.append("synthetic-fallback")  # visible in the W&B run list, not only its config
    run_config["parameters"] = parameter_counts(parts["model_config"])
    run_config["provenance"] = provenance()
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_config)))
    train_loader, val_loader = build_loaders(data, parts["trainer_config"], world)
    trainer = Trainer(model, parts["optimizer"], parts["schedule"], train_loader, val_loader,
                      parts["trainer_config"], run_dir, logger, run_config)
    summary = trainer.fit()
    if world.is_main:
        print(format_summary(summary), flush=True)
    return summary


def build_loaders(
    data: PreparedData, config: TrainerConfig, world: distributed.World
) -> tuple[TrainLoader, ValLoader]:
    """This rank's training stream (its share of each micro-batch) and the validation windows
    (a global micro-batch each; the trainer scores each rank's share), on the training device."""
    from gpt_oss.training.trainer import training_device

    device = training_device(config, world)
    micro = config.batch_size // config.grad_accum  # over all ranks; each takes its share
    train = TrainLoader(data.train, micro // world.size, config.seq_len, config.seed,
                        device=device, rank=world.rank, world_size=world.size)
    val = ValLoader(data.val, micro, config.seq_len, max_batches=config.eval_batches, device=device)
    return train, val


def _drop_log_files() -> None:
    """Ranks > 0 log to the console only: rank 0 alone writes the run's train.log."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def follower_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides for the ranks > 0 of a torchrun or srun launch: no run directory, .hydra/
    or log file of their own (their ${now:...} may name another second), warnings and errors on
    the console; run() then trains in rank 0's directory. A sweep (-m) of distributed jobs goes
    through hydra/launcher=slurm_ddp."""
    world = distributed.launch_world()
    if world.size > 1 and {"-m", "--multirun"} & set(argv):
        raise SystemExit(
            "torchrun/srun with -m is not supported: launch a sweep of distributed jobs with "
            "hydra/launcher=slurm_ddp, or run one torchrun per sweep point"
        )
    if world.rank == 0:
        return []
    logging_overrides = ["hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING"]
    return ["hydra.run.dir=.", "hydra.output_subdir=null", *logging_overrides]


def _missing_identity(logger_cfg: DictConfig, group: str | None, name: str | None) -> dict[str, str]:
    fields = {"group": group, "name": name}
    return {k: v for k, v in fields.items() if v is not None and k in logger_cfg and logger_cfg[k] is None}


def pin_sweep_gpu() -> str | None:
    """hydra/launcher=gpu_pool: give this job's worker process a GPU of its own (see gpu_pool)."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or hc.runtime.choices.get("hydra/launcher") != "gpu_pool":
        return None
    from gpt_oss.studies.gpu_pool import pin_process_gpu

    gpu = pin_process_gpu(hc.job.num, Path(hc.sweep.dir) / ".gpu_pool")
    log.info("gpu_pool: job %d runs on CUDA_VISIBLE_DEVICES=%s", hc.job.num, gpu)
    return gpu


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    pin_sweep_gpu()  # first: CUDA reads CUDA_VISIBLE_DEVICES once, at its first use
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except (ConfigError, CheckpointError, InterpolationResolutionError, _data_error()) as error:
        log.error("%s: %s", type(error).__name__, error)
        raise SystemExit(2) from error
    if summary["stopped_by"]:
        exit_stopped(summary)
    return summary["best_val_loss"]  # what a sweeper (e.g. Optuna) minimises


def exit_stopped(summary: dict[str, Any]) -> None:
    """A run a signal stopped: say how to continue it, then exit with 128 + the signal's
    number (see gpt_oss/training/signals.py), never 0, so a launcher knows it is unfinished."""
    from gpt_oss.training.signals import exit_status

    status = exit_status(summary["stopped_by"])
    world = distributed.launch_world()
    if world.is_main:
        last = "last/" if summary["sharded_checkpoints"] else "last.pt"
        lines = [
            f"{summary['stopped_by']} stopped the run after step {summary['steps']} of "
            f"{summary['max_steps']}; {summary['checkpoints']}/{last} holds it. Resume with:",
            "  " + resume_command(Path(summary["run_dir"]), world.size),
            f"exit status {status} (128 + {summary['stopped_by']}): the run is not finished",
        ]
        log.warning("\n".join(lines))  # the console and the run's train.log
    raise SystemExit(status)


def resume_command(run_dir: Path, world_size: int = 1) -> str:
    """The command line that continues this run in its run directory: this job's overrides,
    hydra.run.dir=<run dir> and trainer.resume=auto."""
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    replaced = ("trainer.resume=", "hydra.run.dir=")
    kept = [o for o in task if not o.lstrip("+~").startswith(replaced)]
    args = [*kept, f"hydra.run.dir={run_dir.resolve()}", "trainer.resume=auto"]
    module = "-m gpt_oss.train " + " ".join(shlex.quote(arg) for arg in args)
    if world_size > 1:
        return f"<the same launcher as before: torchrun ... or srun ...> {module}"
    return f"{shlex.quote(sys.executable)} {module}"


def _data_error() -> type[Exception]:
    from gpt_oss.data.config import DataError

    return DataError


if __name__ == "__main__":
    sys.argv += follower_overrides(sys.argv[1:])  # before Hydra makes the run directory
    main()
