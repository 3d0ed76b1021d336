"""The Hydra side shared by the entry points: structured-config schemas (a misspelled key or a
wrong type fails at compose time), resolvers, and `build`, which instantiates and validates
every config group.

Imported by the entry points only (train, bench, data): library code never touches Hydra. Model, data and trainer are typed by the library's own dataclasses, each
widened with the `_target_` that `hydra.utils.instantiate` needs; optimizer, schedule and
logger are open dicts because their keys depend on the chosen target.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, Container, DictConfig, OmegaConf

from gpt_oss.data.config import DataConfig
from gpt_oss.model.config import ConfigError, ModelConfig, layer_pattern
from gpt_oss.model.vocabulary import follow_data, planned_size, resolve_vocabulary
from gpt_oss.studies.gpu_pool import gpu_count
from gpt_oss.training import distributed
from gpt_oss.training.trainer import TrainerConfig


def targeted(cls: type) -> type:
    """`cls` plus a `_target_` field defaulting to cls itself."""
    target = f"{cls.__module__}.{cls.__qualname__}"
    fields = [("_target_", str, field(default=target))]
    # module=__name__ and matching global names keep the classes picklable (multirun launchers)
    node = make_dataclass(f"{cls.__name__}Node", fields, bases=(cls,))
    node.__module__ = __name__
    return node


ModelConfigNode = targeted(ModelConfig)
DataConfigNode = targeted(DataConfig)
TrainerConfigNode = targeted(TrainerConfig)


@dataclass
class RunConfig:
    """The root config: one field per group, plus run-wide settings."""

    # MISSING, not an instance: the dataclass defaults must not run __post_init__ before the
    # group's YAML is merged in (layer_types would be fixed to the default layer count).
    model: ModelConfigNode = MISSING
    data: DataConfigNode = MISSING
    optimizer: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfigNode = MISSING
    logger: dict[str, Any] = field(default_factory=dict)
    name: str = "gpt-oss"  # run name prefix; W&B project is the logger's


def register() -> None:
    """Register the root schema under the name conf/config.yaml lists first."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def layers_resolver(name: str, num_layers: int | None = None, *, _parent_: Container) -> list[str]:
    """`${layers:NAME}`: gpt_oss.model.config.layer_pattern NAME for the enclosing model's
    num_hidden_layers (`${layers:NAME,N}` for N layers), so a sweep names patterns, not lists:
    `model.layer_types='${layers:all_full}','${layers:one_in_four}'`. A config file that merges
    it onto a null layer_types must set num_hidden_layers too: OmegaConf resolves it there."""
    if num_layers is None:
        num_layers = _parent_.get("num_hidden_layers") if OmegaConf.is_dict(_parent_) else None
        if num_layers is None:
            raise ConfigError(
                f"${{layers:{name}}} needs num_hidden_layers beside it; write ${{layers:{name},N}}"
            )
    return layer_pattern(str(name), int(num_layers))


def repo_dir() -> str:
    """`${repo_dir:}`: the source checkout (conf/, experiments/), wherever the command runs."""
    return str(Path(__file__).resolve().parents[1])


# At import, not in register(): multirun workers compose configs (hydra.searchpath, sweeps) in
# fresh processes that import this module when they unpickle the config store.
OmegaConf.register_new_resolver("layers", layers_resolver, replace=True)
OmegaConf.register_new_resolver("repo_dir", repo_dir, replace=True)
OmegaConf.register_new_resolver("gpu_count", gpu_count, replace=True)  # hydra/launcher=gpu_pool


# ----------------------------------------------------------------------------------------------
# instantiate: config groups -> validated library objects


def check_partial(factory: Any, group: str, first_arg: str) -> None:
    """Fail now, not at step 0, when an optimizer/schedule config names an unknown argument."""
    try:
        inspect.signature(factory.func).bind(None, **factory.keywords)
    except TypeError as error:
        params = [p for p in inspect.signature(factory.func).parameters if p != first_arg]
        raise ConfigError(f"{group} config does not fit {factory.func.__name__}: {error}; valid keys: {params}") from error


def make(node: DictConfig, group: str, /, **kwargs: Any) -> Any:
    """instantiate, with a failure reported as a ConfigError that names the group (positional:
    kwargs may hold a field named group, as W&B's logger has)."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise ConfigError(f"{group} config is invalid: {error}") from error


def agree_vocabulary(model_config: ModelConfig, data_config: DataConfig) -> ModelConfig:
    """data.vocabulary=auto resolved against the model (data_config is updated in place), and
    the model config with vocab_size as far as it is known before the data is prepared: null
    follows the data; a stated size that disagrees is a ConfigError naming both values."""
    data_config.vocabulary = resolve_vocabulary(data_config.vocabulary, model_config.vocab_size)
    planned = planned_size(data_config.vocabulary, data_config.vocab_size)
    size = follow_data(model_config.vocab_size, planned, vocabulary_setting(data_config))
    return dataclasses.replace(model_config, vocab_size=size)


def vocabulary_setting(data_config: DataConfig) -> str:
    """How the data's vocabulary is chosen, in config terms (for messages)."""
    if data_config.vocabulary == "full":
        return "data.vocabulary=full"
    size = "null" if data_config.vocab_size is None else data_config.vocab_size
    return f"data.vocabulary=compact, data.vocab_size={size}"


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate and validate every config group; no data is read and no model is built."""
    data_config: DataConfig = make(cfg.data, "data")
    model_config = agree_vocabulary(make(cfg.model, "model"), data_config)
    trainer_config = make(cfg.trainer, "trainer")
    trainer_config.validate(distributed.launch_world().size)
    if trainer_config.seq_len > model_config.max_position_embeddings:
        raise ConfigError(
            f"trainer.seq_len={trainer_config.seq_len} is invalid: exceeds "
            f"model.max_position_embeddings={model_config.max_position_embeddings}"
        )
    optimizer = make(cfg.optimizer, "optimizer")
    check_partial(optimizer, "optimizer", "model")
    schedule = make(cfg.schedule, "schedule")
    check_partial(schedule, "schedule", "optimizer")
    return {
        "model_config": model_config,
        "trainer_config": trainer_config,
        "data_config": data_config,
        "optimizer": optimizer,
        "schedule": schedule,
    }
