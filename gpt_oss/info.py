"""Entry point: parameter counts and memory needs of a model shape (gpt_oss.model.size).

python -m gpt_oss.info model=full
python -m gpt_oss.info model=full gpus=8 batch_size=1 seq_len=4096   # per-GPU training plan
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt_oss import schema
from gpt_oss.cli import exit_on_input_error
from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.size import (
    format_report,
    format_training_plan,
    meta_parameter_count,
    parameter_counts,
    training_memory,
)
from gpt_oss.paths import CONF_DIR

schema.register()  # info_schema, first in conf/info.yaml's defaults


def model_config(node: DictConfig) -> ModelConfig:
    """The ModelConfig a Hydra model group describes (with plain lists, not ListConfig)."""
    return hydra.utils.instantiate(node, _convert_="all")


def resolved_model_config(cfg: DictConfig) -> ModelConfig:
    """The model group's config with a null vocab_size resolved as training would resolve it
    against the data group (data.vocab_size for compact, 201088 for full); no data is read."""
    config = schema.agree_vocabulary(model_config(cfg.model), hydra.utils.instantiate(cfg.data))
    if config.vocab_size is None:
        raise ConfigError(
            "model.vocab_size follows the data, and data.vocab_size=null (every id the training "
            "split uses) is only known once the data is prepared: give data.vocab_size=N or "
            "model.vocab_size=N"
        )
    return config


def report(cfg: DictConfig) -> None:
    """Check every setting of conf/info.yaml (ConfigError naming it), then print the counts and
    the training plan."""
    schema.check(cfg, schema.InfoConfig)
    config = resolved_model_config(cfg)
    if cfg.seq_len > config.max_position_embeddings:
        raise ConfigError(
            f"seq_len={cfg.seq_len} is invalid: exceeds model.max_position_embeddings="
            f"{config.max_position_embeddings}"
        )
    counts = parameter_counts(config)
    name = (
        HydraConfig.get().runtime.choices.get("model", "model")
        if HydraConfig.initialized()
        else "model"
    )
    print(format_report(name, config, counts))
    plan_args = (cfg.gpus, cfg.batch_size, cfg.seq_len, cfg.activation_checkpointing)
    plan = training_memory(config, *plan_args)
    print("\n" + format_training_plan(plan, *plan_args, gpu_gb=cfg.gpu_memory_gb))
    if cfg.get("verify_meta", False):
        built = meta_parameter_count(config)
        if built != counts["total"]:
            raise SystemExit(f"analytic total {counts['total']} != meta-device build {built}")
        print(f"\nmeta-device build agrees: {built:,} parameters")


@schema.checked_command_line(schema.InfoConfig)
@hydra.main(version_base=None, config_path=CONF_DIR, config_name="info")
def main(cfg: DictConfig) -> None:
    exit_on_input_error(report, cfg)


if __name__ == "__main__":
    main()
