"""Entry point: `python -m gpt_oss.train [overrides]` (and `-m` for sweeps).

Thin by design: compose (Hydra), validate everything, then hand the instantiated parts to the
library's Trainer. Every error that a config can cause is raised before data preparation or
training starts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from gpt_oss import schema
from gpt_oss.data.config import DataConfig
from gpt_oss.data.loaders import TrainLoader, ValLoader
from gpt_oss.data.prepare import PreparedData, prepare_data
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.model import build_model
from gpt_oss.model.vocabulary import VocabularyError, follow_data
from gpt_oss.paths import CONF_DIR
from gpt_oss.schema import build, make, vocabulary_setting
from gpt_oss.training import distributed
from gpt_oss.training.checkpoint import (
    SHARDED_STATE,
    CheckpointError,
    check_resumable,
    read_checkpoint,
    resolve_resume,
)
from gpt_oss.training.tracking import LoggerGroup, read_metrics, short_run_name

if TYPE_CHECKING:
    from gpt_oss.training.trainer import TrainerConfig

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
    return {
        "torch": str(torch.__version__),
        "python": sys.version.split()[0],
        "git_commit": commit,
        "git_dirty": None if commit is None else bool(dirty),
        "overrides": list(overrides or []),
    }


def _git(args: list[str], cwd: Path) -> str | None:
    """A git command's stripped output; None outside a checkout or without git."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate, check the checkpoint to resume, prepare data, build, train; returns the
    trainer's summary (a resumed run that had already finished: its state, untouched).

    overrides: the command line's, as typed (main passes Hydra's): with trainer.resume, the
    continued run's saved config with only these applied (resume_config). None: cfg is the
    whole config. With trainer.parallel=ddp|fsdp every process that torchrun or SLURM started
    runs this; they join one process group and train in rank 0's run directory, which rank 0
    alone writes.
    """
    from gpt_oss.model.config import resolve_device

    parts = build(cfg)
    trainer_config = parts["trainer_config"]
    with distributed.process_group(
        trainer_config.parallel, resolve_device(trainer_config.device, "trainer.device")
    ) as world:
        run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's ${now:...} wins
        changes: list[str] = []
        if overrides is not None:  # after the broadcast: trainer.resume=auto means rank 0's dir
            cfg, changes = resume_config(cfg, overrides, run_dir)
            parts = build(cfg)
        if finished := check_resume(cfg, parts, run_dir):  # before anything is prepared or written
            return finished
        if world.is_main:
            for change in changes:
                log.info("resume: %s", change)
        if not world.is_main:
            _drop_log_files()
        return _train(cfg, parts, run_dir, world)


def check_resume(cfg: DictConfig, parts: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """With trainer.resume, a quick look at the checkpoint (configs and step, no tensors):
    CheckpointError when it cannot continue this run (another model or optimizer); the summary
    of a run that already reached trainer.max_steps (nothing to do); else None."""
    trainer_config = parts["trainer_config"]
    if not trainer_config.resume:
        return None
    sharded = trainer_config.parallel != "none"
    path = resolve_resume(trainer_config.resume, run_dir, sharded)
    if path is None:
        return None
    payload = read_checkpoint(path / SHARDED_STATE if sharded else path, verify=False)
    optimizer = (payload.get("run_config") or {}).get("optimizer", {}).get("_target_")
    check_resumable(path, payload, parts["model_config"])
    if optimizer and optimizer != cfg.optimizer.get("_target_"):
        raise CheckpointError(
            f"{path} was trained with optimizer={optimizer.rsplit('.', 1)[-1]} ({optimizer}), "
            f"this run uses optimizer={str(cfg.optimizer.get('_target_')).rsplit('.', 1)[-1]}: "
            "resume with the run's optimizer, or start a new run"
        )
    if payload["step"] < trainer_config.max_steps:
        return None
    print(
        f"{path} already finished: it is at step {payload['step']} of trainer.max_steps="
        f"{trainer_config.max_steps}, so there is nothing to train. To train longer, resume with "
        f"trainer.max_steps=<more than {payload['step']}>.",
        flush=True,
    )
    val = [r for r in read_metrics(path.parent.parent / "metrics.jsonl") if r.get("split") == "val"]
    return {"steps": payload["step"], "already_finished": True, "checkpoint": str(path),
            "stopped_by": None, "best_val_loss": payload["best_val"],
            "best_val_bpb": min((r["bpb"] for r in val), default=math.nan)}  # fmt: skip


def _train(
    cfg: DictConfig, parts: dict[str, Any], run_dir: Path, world: distributed.World
) -> dict[str, Any]:
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
    if parts["init_from"] is not None:  # a new run from another run's (or model's) weights
        from gpt_oss.training.weights import initialize_from, load_init_weights

        weights = load_init_weights(model_config, parts["init_from"], data.vocabulary)
        run_config["init_from"] = initialize_from(model, weights)
    run_config["data"]["fallback"] = data.fallback  # None, or why TinyStories was replaced
    run_config["data_prepared"] = data.summary()  # what was actually read: source, sizes, sha256
    if data.fallback:
        logger.add_tags("synthetic-fallback")  # visible in the W&B run list, not only its config
    run_config["parameters"] = parameter_counts(model_config)
    run_config["provenance"] = provenance(_task_overrides())
    train_loader, val_loader = build_loaders(data, parts["trainer_config"], world)
    trainer = Trainer(model, parts["optimizer"], parts["schedule"], train_loader, val_loader,
                      parts["trainer_config"], run_dir, logger, run_config,
                      vocabulary=data.vocabulary)  # fmt: skip
    trainer.resume()  # checks the checkpoint fits before the run directory is written
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_config)))
        write_hydra_record(run_dir, cfg, trainer.resumed_from)
    try:
        summary = trainer.fit()
    except BaseException:  # diverged, interrupted, failed: keep what the loggers hold so far
        logger.finish(exit_code=1)
        raise
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
    train = TrainLoader(
        data.train,
        micro // world.size,
        config.seq_len,
        config.seed,
        device=device,
        rank=world.rank,
        world_size=world.size,
    )
    val = ValLoader(data.val, micro, config.seq_len, max_batches=config.eval_batches, device=device)
    return train, val


def follow_data_vocabulary(
    model_config: ModelConfig, data: PreparedData, data_config: DataConfig
) -> ModelConfig:
    """The model config with the prepared data's vocabulary size (null follows it); a stated
    size that disagrees is a ConfigError naming both, before any model is built."""
    size = follow_data(
        model_config.vocab_size, data.vocabulary.size, vocabulary_setting(data_config)
    )
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


def make_loggers(
    node: DictConfig, group: str | None = None, name: str | None = None
) -> LoggerGroup:
    """Every logger the `logger` group selected (logger=[wandb,tensorboard,csv]), as one.
    A W&B group or name left null gets the sweep's group and the run's short name."""
    loggers = {}
    for key, entry in node.items():
        if not OmegaConf.is_dict(entry) or "_target_" not in entry:
            raise ConfigError(
                f"logger.{key}="
                f"{OmegaConf.to_container(entry) if OmegaConf.is_config(entry) else entry!r} "
                "is not a logger: `logger` holds one entry per logger, chosen with logger=wandb or "
                "logger=[wandb,tensorboard,csv]; set a logger's options under its name, e.g. "
                f"logger.wandb.{key}=..."
            )
        loggers[str(key)] = make(entry, f"logger.{key}", **_missing_identity(entry, group, name))
    return LoggerGroup(loggers)


def _missing_identity(
    logger_cfg: DictConfig, group: str | None, name: str | None
) -> dict[str, str]:
    fields = {"group": group, "name": name}
    return {
        k: v
        for k, v in fields.items()
        if v is not None and k in logger_cfg and logger_cfg[k] is None
    }


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


RUN_GROUPS = ("model", "data", "optimizer", "schedule", "trainer", "logger")
# How to run, not what: taken from today's command line, never from the continued run.
LAUNCH_FIELDS = ("trainer.resume", "trainer.parallel", "trainer.device", "trainer.progress")
TYPED_GROUPS = ("model", "data", "trainer")  # schema dataclasses: only their fields are kept
HYDRA_RECORD = ".hydra"  # written by write_hydra_record once the run starts (not by Hydra)


def resume_config(
    cfg: DictConfig, overrides: list[str], run_dir: Path
) -> tuple[DictConfig, list[str]]:
    """With trainer.resume: the config of the run it continues (stored in its checkpoint) with
    only `overrides` (the command line's, as typed) applied, and what they changed
    ("trainer.max_steps: 300 -> 400"). Unchanged cfg when there is nothing to resume yet.

    A group choice given now (model=tiny, ...) must select what the run already has: a resume
    keeps the run's model, data, optimizer, schedule and trainer (ConfigError naming the field
    it would change), except logger=..., which only changes where metrics go. LAUNCH_FIELDS
    are today's.
    """
    trainer = cfg.trainer
    if not trainer.resume:
        return cfg, []
    path = resolve_resume(trainer.resume, run_dir, trainer.parallel != "none")
    if path is None:
        return cfg, []
    payload = read_checkpoint(path / SHARDED_STATE if path.is_dir() else path, verify=False)
    saved = payload.get("run_config") or {}
    if not saved:
        return cfg, []
    parsed = OverridesParser.create().parse_overrides(overrides)
    given = [o.key_or_group for o in parsed]
    merged = cfg.copy()
    for group in RUN_GROUPS:
        if group == "logger" and group in given or group not in saved:
            continue
        node = {
            k: v for k, v in saved[group].items() if group not in TYPED_GROUPS or k in cfg[group]
        }
        if group in given:
            choice = next(o.value() for o in parsed if o.key_or_group == group)
            _check_group_choice(f"{group}={choice}", cfg[group], node, given)
        for key in given:
            if key.startswith(f"{group}."):
                node = _with_override(
                    node, key.removeprefix(f"{group}."), OmegaConf.select(cfg, key)
                )
        if group in TYPED_GROUPS:  # a schema dataclass: set field by field
            for key, value in node.items():
                merged[group][key] = value
        else:
            merged[group] = node
    if "name" in saved and "name" not in given:
        merged.name = saved["name"]
    for key in LAUNCH_FIELDS:
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key))
    return merged, _changes(saved, merged)


def _with_override(node: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    config = OmegaConf.create(node)
    OmegaConf.update(config, key, value, force_add=True)
    return OmegaConf.to_container(config)


# Settings a group may leave to the run, which records what it decided in its config.yaml: a
# resume that names the same group compares the decision with the run's own, not with "auto".
RESOLVED_BY_THE_RUN = {
    "model.vocab_size": (None,),  # follows the data's vocabulary
    "data.vocabulary": ("auto",),  # compact or full, by the model's vocab_size
    "data.vocab_size": (None,),  # every id the training split uses
}


def _check_group_choice(
    choice: str, node: DictConfig, saved: dict[str, Any], given: list[str]
) -> None:
    """ConfigError when the group chosen now differs from the run's in a field not set now.
    A field the run resolves from its data (RESOLVED_BY_THE_RUN) matches what it resolved to."""
    group = choice.split("=", 1)[0]
    for key, value in OmegaConf.to_container(node, resolve=True).items():
        name = f"{group}.{key}"
        if value in RESOLVED_BY_THE_RUN.get(name, ()):
            continue  # the group says "decide from the data"; the run's config holds the decision
        if name not in given and name not in LAUNCH_FIELDS and saved.get(key, value) != value:
            raise ConfigError(
                f"{choice} on a resume would change {group}.{key} from {saved[key]!r} to "
                f"{value!r}: a resume keeps the run's {group}; drop {choice} (set single fields "
                f"with {group}.<field>=...), or start a new run"
            )


def _changes(saved: dict[str, Any], merged: DictConfig) -> list[str]:
    """ "key: saved -> now" for every leaf the merge changed (trainer.resume aside)."""
    now = OmegaConf.to_container(merged, resolve=True)
    changes = []
    for group in (*RUN_GROUPS, "name"):
        before, after = _leaves(saved.get(group), group), _leaves(now.get(group), group)
        for key in sorted(set(before) | set(after)):
            if key != "trainer.resume" and key in after and before.get(key) != after[key]:
                changes.append(f"{key}: {before.get(key)!r} -> {after[key]!r}")
    return changes


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {
        k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}.{key}").items()
    }


def write_hydra_record(run_dir: Path, cfg: DictConfig, resumed_from: Path | None) -> None:
    """What Hydra writes into .hydra/ (config.yaml, hydra.yaml, overrides.yaml), written once
    the run's checks have passed (conf/config.yaml sets hydra.output_subdir=null), so a refused
    run changes no file. A resumed run records the overrides of the run it continues, then
    today's (a key given twice keeps today's value). Nothing outside a Hydra app."""
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    earlier_record = (
        resumed_from.parent.parent / HYDRA_RECORD / "overrides.yaml" if resumed_from else None
    )
    earlier = (
        list(OmegaConf.load(earlier_record)) if earlier_record and earlier_record.is_file() else []
    )
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    overrides = [o for o in earlier if o.split("=", 1)[0].lstrip("+~") not in keys] + overrides
    record = run_dir / HYDRA_RECORD
    record.mkdir(parents=True, exist_ok=True)
    (record / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (record / "hydra.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    (record / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))


@schema.checked_command_line(schema.RunConfig)
@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    pin_sweep_gpu()  # first: CUDA reads CUDA_VISIBLE_DEVICES once, at its first use
    hc = HydraConfig.get()
    run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
    try:
        summary = run(cfg, run_dir, overrides)
    except (
        ConfigError,
        CheckpointError,
        VocabularyError,
        InterpolationResolutionError,
        _data_error(),
    ) as error:
        # stderr, not the log file: a refused resume leaves its run directory as it was
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        discard_unused_run_dir(run_dir)
        raise SystemExit(2) from error
    except BaseException:
        discard_unused_run_dir(run_dir)
        raise
    if summary["stopped_by"]:
        exit_stopped(summary)
    return summary["best_val_bpb"]  # what a sweeper minimises (conf/hparams_search/optuna.yaml)


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
    """The command line that continues this run in its run directory. A resume takes the run's
    config from its checkpoint (resume_config), so it repeats only what a resume takes from
    today's command line: the launch settings and the logger choice."""
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    todays = [o for o in task if _is_todays_on_resume(o.split("=", 1)[0].lstrip("+~"))]
    args = [*todays, f"hydra.run.dir={run_dir.resolve()}", "trainer.resume=auto"]
    module = "-m gpt_oss.train " + " ".join(shlex.quote(arg) for arg in args)
    if world_size > 1:
        return f"<the same launcher as before: torchrun ... or srun ...> {module}"
    return f"{shlex.quote(sys.executable)} {module}"


def _is_todays_on_resume(key: str) -> bool:
    return (key in LAUNCH_FIELDS and key != "trainer.resume") or key.split(".")[0] == "logger"


def discard_unused_run_dir(run_dir: Path) -> bool:
    """Remove the run directory Hydra made for a run that failed before writing anything of its
    own (only Hydra's log, and .hydra/, are there; the error went to the console too), and its
    date folder if that is left empty. A directory holding anything else is never touched."""
    run_dir = run_dir.resolve()
    hydra_files = {HYDRA_RECORD, f"{HydraConfig.get().job.name}.log"}
    names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if not names or not names <= hydra_files or run_dir == Path.cwd().resolve():
        return False
    for handler in [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]:
        if Path(handler.baseFilename).parent == run_dir:
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir)
    parent = run_dir.parent
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", parent.name) and not any(parent.iterdir()):
        parent.rmdir()  # outputs/runs/<date>/ of the default hydra.run.dir, now empty
    return True


def cli() -> None:
    """Console script `gpt-oss-train`: as `python -m gpt_oss.train`."""
    sys.argv += follower_overrides(sys.argv[1:])  # before Hydra makes the run directory
    main()


def _data_error() -> type[Exception]:
    from gpt_oss.data.config import DataError

    return DataError


if __name__ == "__main__":
    cli()
