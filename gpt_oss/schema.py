"""Hydra structured-config schemas: a misspelled key or a wrong type fails at compose time.

Imported by the entry points only (train, generate, bench, data, info, compare): library code
never touches Hydra. Model, data and trainer are typed by the library's own dataclasses, each
widened with the `_target_` that `hydra.utils.instantiate` needs; optimizer, schedule and
logger are open dicts because their keys depend on the chosen target.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, Container, OmegaConf

from gpt_oss.config import ConfigError, ModelConfig, layer_pattern
from gpt_oss.data import DataConfig
from gpt_oss.gpu_pool import gpu_count
from gpt_oss.paths import config_root
from gpt_oss.trainer import TrainerConfig


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
    """`${layers:NAME}`: gpt_oss.config.layer_pattern NAME for the enclosing model's
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
    """`${repo_dir:}`: the folder holding conf/ and experiments/, wherever the command runs: the
    source checkout, or the installed package folder (never site-packages itself)."""
    return str(config_root())


# At import, not in register(): multirun workers compose configs (hydra.searchpath, sweeps) in
# fresh processes that import this module when they unpickle the config store.
OmegaConf.register_new_resolver("layers", layers_resolver, replace=True)
OmegaConf.register_new_resolver("repo_dir", repo_dir, replace=True)
OmegaConf.register_new_resolver("gpu_count", gpu_count, replace=True)  # hydra/launcher=gpu_pool
