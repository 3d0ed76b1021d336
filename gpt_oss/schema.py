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
from omegaconf import MISSING

from gpt_oss.config import ModelConfig
from gpt_oss.data import DataConfig
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
