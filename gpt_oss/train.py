"""Entry point: `python -m gpt_oss.train [overrides]` (and `-m` for sweeps).

Thin by design: compose (Hydra), validate everything, then hand the instantiated parts to the
library's Trainer. Every error that a config can cause is raised before data preparation or
training starts.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from gpt_oss import schema
from gpt_oss.data.config import DataConfig
from gpt_oss.data.prepare import PreparedData, prepare_data
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.hf import CheckpointError
from gpt_oss.model.model import build_model
from gpt_oss.model.vocabulary import VocabularyError, follow_data
from gpt_oss.schema import build, make, vocabulary_setting
from gpt_oss.training import distributed
from gpt_oss.training.tracking import LoggerGroup, short_run_name

log = logging.getLogger("gpt_oss.train")
schema.register()


def job_identity(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(W&B group, run name): a sweep shares one group and names each job by its swept keys
    (`num_experts=8`); a single run is named by its overrides, keys shortened, at most 64 chars."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    excluded = set(hc.job.config.override_dirname.exclude_keys)
    overrides = [o for o in hc.overrides.task if o.partition("=")[0].lstrip("+~") not in excluded]
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)  # outputs/multirun/<date>/<time>: both parts, unique per sweep
        name = short_run_name(overrides, swept_keys(hc)) or f"job{hc.job.num}"
        return seed_group(f"{cfg.name}-{sweep.parent.name}-{sweep.name}", overrides), name
    return None, short_run_name(overrides)


def seed_group(sweep_group: str, overrides: list[str]) -> str:
    """A sweep job's W&B group: the sweep's; or, when the job sets trainer.seed,
    '<sweep group>/<its other overrides>', so W&B aggregates the seeds of one setting
    (compare --wandb-group <sweep group> still reads them all)."""
    if not any(o.lstrip("+~").partition("=")[0] == "trainer.seed" for o in overrides):
        return sweep_group
    others = [o for o in overrides if o.lstrip("+~").partition("=")[0] != "trainer.seed"]
    return f"{sweep_group}/{','.join(others) or 'default'}"


def swept_keys(hc: Any) -> set[str]:
    """The keys a multirun sweeps: the sweeper's params (an experiment's hydra.sweeper.params)
    and the command line's sweep overrides (`k=a,b`, `k=range(...)`), read from the sweep's
    multirun.yaml, which holds the command line as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {str(k).lstrip("+~") for k in (hc.sweeper.get("params") or {})}
    multirun = Path(hc.sweep.dir) / "multirun.yaml"
    if multirun.is_file():
        typed = OmegaConf.load(multirun).hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides(list(typed))
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys


def provenance(overrides: list[str] | None = None) -> dict[str, Any]:
    """Versions, git commit and dirty flag, and the command line's overrides, so a run
    directory (and its W&B run, whose name is short) says what produced it."""
    source = Path(__file__).parent
    commit, dirty = _git(["rev-parse", "HEAD"], source), _git(["status", "--porcelain"], source)
    return {"torch": str(torch.__version__), "python": sys.version.split()[0],
            "git_commit": commit, "git_dirty": None if commit is None else bool(dirty),
            "overrides": list(overrides or [])}


def _git(args: list[str], cwd: Path) -> str | None:
    """A git command's stripped output; None outside a checkout or without git."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


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
    logger = make_loggers(cfg.logger, group, name)
    data = prepare_data(parts["data_config"], world)  # rank 0 first, then the others
    model_config = follow_data_vocabulary(parts["model_config"], data, parts["data_config"])
    seed_everything(parts["trainer_config"].seed)
    model = build_model(model_config, meta=parts["trainer_config"].meta_init)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    # what auto and null resolved to, so config.yaml reruns as this run
    run_config["data"]["vocabulary"] = data.vocabulary.kind
    run_config["data"]["vocab_size"] = data.vocabulary.size
    run_config["model"]["vocab_size"] = model_config.vocab_size
    run_config["data"]["fallback"] = data.fallback  # None, or why TinyStories was replaced
    run_config["data_prepared"] = data.summary()  # what was actually read: source, sizes, sha256
    if data.fallback:
        logger.add_tags("synthetic-fallback")  # visible in the W&B run list, not only its config
    run_config["parameters"] = parameter_counts(model_config)
    run_config["provenance"] = provenance(_task_overrides())
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_config)))
    trainer = Trainer(model, parts["optimizer"], parts["schedule"], data, parts["trainer_config"],
                      run_dir, logger, run_config, vocabulary=data.vocabulary)
    try:
        summary = trainer.fit()
    except BaseException:  # diverged, interrupted, failed: keep what the loggers hold so far
        logger.finish(exit_code=1)
        raise
    if world.is_main:
        print(format_summary(summary), flush=True)
    return summary


def follow_data_vocabulary(model_config: ModelConfig, data: PreparedData, data_config: DataConfig) -> ModelConfig:
    """The model config with the prepared data's vocabulary size (null follows it); a stated
    size that disagrees is a ConfigError naming both, before any model is built."""
    size = follow_data(model_config.vocab_size, data.vocabulary.size, vocabulary_setting(data_config))
    return dataclasses.replace(model_config, vocab_size=size)


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


def make_loggers(node: DictConfig, group: str | None = None, name: str | None = None) -> LoggerGroup:
    """Every logger the `logger` group selected (logger=[wandb,tensorboard,csv]), as one.
    A W&B group or name left null gets the sweep's group and the run's short name."""
    loggers = {}
    for key, entry in node.items():
        if not OmegaConf.is_dict(entry) or "_target_" not in entry:
            raise ConfigError(
                f"logger.{key}={OmegaConf.to_container(entry) if OmegaConf.is_config(entry) else entry!r} "
                "is not a logger: `logger` holds one entry per logger, chosen with logger=wandb or "
                "logger=[wandb,tensorboard,csv]; set a logger's options under its name, e.g. "
                f"logger.wandb.{key}=..."
            )
        loggers[str(key)] = make(entry, f"logger.{key}", **_missing_identity(entry, group, name))
    return LoggerGroup(loggers)


def _missing_identity(logger_cfg: DictConfig, group: str | None, name: str | None) -> dict[str, str]:
    fields = {"group": group, "name": name}
    return {k: v for k, v in fields.items() if v is not None and k in logger_cfg and logger_cfg[k] is None}


def _task_overrides() -> list[str]:
    """The command line's overrides of this job (Hydra's task overrides); [] outside Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def pin_sweep_gpu() -> str | None:
    """hydra/launcher=gpu_pool: give this job's worker process a GPU of its own (see gpu_pool)."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or hc.runtime.choices.get("hydra/launcher") != "gpu_pool":
        return None
    from gpt_oss.studies.gpu_pool import pin_process_gpu

    gpu = pin_process_gpu(hc.job.num, Path(hc.sweep.dir) / ".gpu_pool")
    log.info("gpu_pool: job %d runs on CUDA_VISIBLE_DEVICES=%s", hc.job.num, gpu)
    return gpu


@schema.checked_command_line(schema.RunConfig)
@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    pin_sweep_gpu()  # first: CUDA reads CUDA_VISIBLE_DEVICES once, at its first use
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except (ConfigError, CheckpointError, VocabularyError, InterpolationResolutionError, _data_error()) as error:
        log.error("%s: %s", type(error).__name__, error)
        raise SystemExit(2) from error
    return summary["best_val_bpb"]  # what a sweeper minimises (conf/hparams_search/optuna.yaml)


def _data_error() -> type[Exception]:
    from gpt_oss.data.config import DataError

    return DataError


if __name__ == "__main__":
    sys.argv += follower_overrides(sys.argv[1:])  # before Hydra makes the run directory
    main()
