"""Entry point: parameter counts and memory needs of a model shape (gpt_oss.model.size).

python -m gpt_oss.info model=full
python -m gpt_oss.info model=full gpus=8 batch_size=1 seq_len=4096   # per-GPU training plan
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt_oss.model.config import ModelConfig
from gpt_oss.model.size import (
    format_report,
    format_training_plan,
    meta_parameter_count,
    parameter_counts,
    training_memory,
)


def model_config(node: DictConfig) -> ModelConfig:
    """The ModelConfig a Hydra model group describes (with plain lists, not ListConfig)."""
    return hydra.utils.instantiate(node, _convert_="all")


@hydra.main(version_base=None, config_path="../conf", config_name="info")
def main(cfg: DictConfig) -> None:
    config = model_config(cfg.model)
    counts = parameter_counts(config)
    name = HydraConfig.get().runtime.choices.get("model", "model")
    print(format_report(name, config, counts))
    plan_args = (cfg.gpus, cfg.batch_size, cfg.seq_len, cfg.activation_checkpointing)
    plan = training_memory(config, *plan_args)
    print("\n" + format_training_plan(plan, *plan_args, gpu_gb=cfg.gpu_memory_gb))
    if cfg.get("verify_meta", False):
        built = meta_parameter_count(config)
        if built != counts["total"]:
            raise SystemExit(f"analytic total {counts['total']} != meta-device build {built}")
        print(f"\nmeta-device build agrees: {built:,} parameters")


if __name__ == "__main__":
    main()
