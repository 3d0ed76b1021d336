"""The Hydra side shared by the entry points: structured-config schemas (a misspelled key or a
wrong type fails at compose time), resolvers, and `build`, which instantiates and validates
every config group.

Imported by the entry points only (train, bench, data): library code never touches Hydra.
Model, data and trainer are typed by the library's own dataclasses, each
widened with the `_target_` that `hydra.utils.instantiate` needs; optimizer, schedule and
logger are open dicts because their keys depend on the chosen target.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from hydra._internal.utils import get_args_parser
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import MISSING, Container, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from gpt_oss.data.config import DataConfig, DataError, default_cache_dir
from gpt_oss.model.config import ConfigError, ModelConfig, layer_pattern
from gpt_oss.model.vocabulary import follow_data, planned_size, resolve_vocabulary
from gpt_oss.paths import config_root
from gpt_oss.studies.gpu_pool import gpu_count
from gpt_oss.training import distributed
from gpt_oss.training.trainer import TrainerConfig
from gpt_oss.validation import check_config, ranged, unknown_key_message

# Root config groups that hold no key of their own (their files are `# @package _global_`):
# valid names at the root beside RunConfig's fields.
ROOT_GROUPS = ("experiment", "experiments", "hparams_search", "debug", "hydra")
# Of those, the ones conf/config.yaml lists as `group: null`: chosen with group=NAME, never +.
DEFAULTS_GROUPS = ("experiment", "hparams_search", "debug")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


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
class PathsConfig:
    """conf/paths/: where data, caches and outputs go (lightning-hydra-template's `paths`)."""

    root_dir: str = MISSING  # the source checkout: conf/, experiments/
    data_dir: str = MISSING  # prepared token files (data.cache_dir)
    hf_cache_dir: str | None = None  # the datasets library's download cache; null = its own
    output_dir: str = MISSING  # run and multirun directories


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
    paths: PathsConfig = field(default_factory=PathsConfig)
    name: str = "gpt-oss"  # run name prefix; W&B project is the logger's


@dataclass
class InfoConfig:
    """conf/info.yaml's schema: a model shape and the training plan to size for it."""

    model: ModelConfigNode = MISSING
    data: DataConfigNode = MISSING  # only its vocabulary: the size a null model.vocab_size follows
    verify_meta: bool = True  # cross-check the analytic count with a meta-device build
    gpus: int = ranged(1, "[1, inf)")  # FSDP shards the weights and optimizer state over them
    batch_size: int = ranged(1, "[1, inf)")  # sequences per GPU per micro-batch
    seq_len: int = ranged(4096, "[1, inf)")
    activation_checkpointing: bool = True
    gpu_memory_gb: float = ranged(80.0, "(0, inf)")  # what the plan is judged against


def check(cfg: Container, schema: type = RunConfig) -> None:
    """Refuse a composed config before anything is built: unknown keys (root ones added with
    `+` included) with the nearest valid one, and every declared range (gpt_oss.validation).
    The `hydra` node, when present, is Hydra's own."""
    node = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        if OmegaConf.is_config(cfg[key])
        else cfg[key]
        for key in cfg
        if key != "hydra"
    }
    check_config(node, schema, extra_keys=root_groups(schema))


def root_groups(schema: type) -> tuple[str, ...]:
    """Config groups valid at the root of `schema`'s configs beside its fields."""
    return ROOT_GROUPS if issubclass(schema, RunConfig) else ("hydra",)


def check_command_line(args: Sequence[str], schema: type, conf_dir: Path = CONF_DIR) -> None:
    """Before Hydra composes: a key override that names no setting (`model.num_expert=4`) gets
    the nearest valid key instead of Hydra's advice to force it in with `+`; `+experiment=NAME`
    gets the right spelling. Only what is certain is refused: group choices, `hydra.*`, keys of
    open groups that some option of the group has, and runs with a config dir of the user's own
    are left to Hydra. Raises ConfigError."""
    parsed = get_args_parser().parse_args(list(args))
    if parsed.shell_completion:  # -sc install=bash: completion commands, not overrides
        return
    own_groups = parsed.config_dir is None and parsed.config_path is None
    for override in OverridesParser.create().parse_overrides(parsed.overrides):
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key or override.package is not None:
            continue
        if override.type == OverrideType.ADD and key in DEFAULTS_GROUPS and own_groups:
            typed = override.input_line.lstrip("+")
            raise ConfigError(
                f"+{typed} is invalid: {key} is a config group of the root defaults "
                f"(`{key}: null`); write {typed} without the +"
            )
        if override.type == OverrideType.CHANGE and (own_groups or "." in key):
            _check_key(key.split("."), schema, conf_dir)


def _check_key(path: list[str], schema: type, conf_dir: Path) -> None:
    """Raise ConfigError when `path` names no setting of `schema` (see check_command_line)."""
    node: Any = schema
    for depth, name in enumerate(path):
        prefix = ".".join(path[:depth])
        if is_dataclass(node):
            keys = [f.name for f in fields(node)]
            extra = root_groups(schema) if depth == 0 else ()
            if name not in keys and name not in extra:
                raise ConfigError(unknown_key_message(prefix, name, [*keys, *extra]))
            node = get_type_hints(node).get(name)
        elif depth == 1 and (conf_dir / prefix).is_dir():  # an open group: optimizer, logger, ...
            keys = {k for option in (conf_dir / prefix).glob("*.yaml") for k in _yaml_keys(option)}
            if keys and name not in keys:
                raise ConfigError(unknown_key_message(prefix, name, keys))
            return
        else:
            return


def _yaml_keys(path: Path) -> list[str]:
    values = OmegaConf.load(path)
    return [str(k) for k in values if k != "defaults"] if OmegaConf.is_dict(values) else []


def checked_command_line(schema: type, conf_dir: Path = CONF_DIR) -> Callable:
    """Decorate a `@hydra.main` function: run from the command line (no arguments), it first
    checks sys.argv with check_command_line and exits with status 2 naming the bad key."""

    def wrap(hydra_main: Callable) -> Callable:
        @functools.wraps(hydra_main)
        def main(*args: Any, **kwargs: Any) -> Any:
            if not args and not kwargs:
                try:
                    check_command_line(sys.argv[1:], schema, conf_dir)
                except ConfigError as error:
                    print(f"ConfigError: {error}", file=sys.stderr, flush=True)
                    raise SystemExit(2) from error
            return hydra_main(*args, **kwargs)

        return main

    return wrap


def register() -> None:
    """Register the root schema under the name conf/config.yaml lists first."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    ConfigStore.instance().store(name="info_schema", node=InfoConfig)


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
    """`${repo_dir:}`: the folder holding conf/ and experiments/, wherever the command runs: the
    source checkout, or the installed package folder (never site-packages itself)."""
    return str(config_root())


# At import, not in register(): multirun workers compose configs (hydra.searchpath, sweeps) in
# fresh processes that import this module when they unpickle the config store.
OmegaConf.register_new_resolver("layers", layers_resolver, replace=True)
OmegaConf.register_new_resolver("repo_dir", repo_dir, replace=True)
OmegaConf.register_new_resolver("gpu_count", gpu_count, replace=True)  # hydra/launcher=gpu_pool
# conf/paths/default.yaml: $GPT_OSS_DATA_DIR, else <repo>/data (a user cache when installed)
OmegaConf.register_new_resolver("data_dir", lambda: str(default_cache_dir()), replace=True)


# ----------------------------------------------------------------------------------------------
# instantiate: config groups -> validated library objects


def check_partial(factory: Any, group: str, first_arg: str) -> None:
    """Fail now, not at step 0, when an optimizer/schedule config names an unknown argument."""
    try:
        inspect.signature(factory.func).bind(None, **factory.keywords)
    except TypeError as error:
        params = [p for p in inspect.signature(factory.func).parameters if p != first_arg]
        raise ConfigError(
            f"{group} config does not fit {factory.func.__name__}: {error}; valid keys: {params}"
        ) from error


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


def build(cfg: DictConfig, root: type = RunConfig) -> dict[str, Any]:
    """Validate every key and value (`check`: declared ranges, unknown keys), then instantiate
    every group and check across fields; no data is read and no model is built."""
    check(cfg, root)
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
    dry_run(optimizer, schedule)
    return {
        "model_config": model_config,
        "trainer_config": trainer_config,
        "data_config": data_config,
        "optimizer": optimizer,
        "schedule": schedule,
        "init_from": init_weights(model_config, trainer_config),
    }


def init_weights(model_config: ModelConfig, trainer_config: TrainerConfig) -> str | None:
    """trainer.init_from, checked against the model's shapes now (before any data is prepared;
    the weights themselves load once the model is built); None without init_from."""
    if not trainer_config.init_from:
        return None
    if trainer_config.meta_init:
        raise ConfigError(
            "trainer.init_from cannot be combined with trainer.meta_init=true: "
            "the weights come from init_from; set trainer.meta_init=false"
        )
    from gpt_oss.training.weights import check_init_from

    check_init_from(model_config, trainer_config.init_from)
    return trainer_config.init_from


def dry_run(optimizer: Any, schedule: Any) -> None:
    """Complete the optimizer and schedule partials on a one-layer stand-in, so a check that
    only the built objects make (warmup_steps <= total_steps, ...) fails now, not at step 0."""
    import torch

    from gpt_oss.model.roles import Role

    class StandIn(torch.nn.Linear):
        PARAMETER_ROLES = {"weight": Role.MATRIX, "bias": Role.BIAS}  # optimizers group by role

    schedule(optimizer(StandIn(2, 2)))


class CheckConfigFirst(Callback):
    """hydra.callbacks in conf/config.yaml: validate (`build`) the composed config before Hydra
    creates the run directory, its .hydra/ and train.log, so a refused config leaves nothing.
    A multirun checks its base config; each job is checked again as it starts."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the task's config
        try:
            build(config)
        except (ConfigError, InterpolationResolutionError, DataError) as error:
            # Hydra turns an exception raised in a callback into a warning: report and exit here
            print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from error
