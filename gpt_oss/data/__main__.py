"""Entry point: `python -m gpt_oss.data data=tinystories|text|synthetic` prepares the token
files ahead of training and prints what it read and wrote."""

from __future__ import annotations

import logging
import sys
import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from gpt_oss import schema
from gpt_oss.data.config import DataError
from gpt_oss.data.prepare import PreparedData, prepare
from gpt_oss.model.config import ConfigError
from gpt_oss.paths import CONF_DIR

log = logging.getLogger("gpt_oss.data")
schema.register()
# Preparing data only prints: no run directory, .hydra folder or log file (given first, so the
# user's own hydra.* overrides still win).
NO_RUN_DIR = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]


def format_summary(prepared: PreparedData, seconds: float) -> str:
    """The lines `python -m gpt_oss.data` prints."""
    lines = [f"source:    {prepared.description}"]
    if prepared.fallback:
        lines.append(f"FALLBACK:  {prepared.fallback}")
    for split, file in (("train", prepared.train), ("val", prepared.val)):
        lines.append(
            f"{split + ':':<10} {file.num_documents:,} docs, {len(file):,} tokens, "
            f"{file.num_bytes:,} bytes -> {file.path}"
        )
    if prepared.prepared_splits:
        tokens = sum(len(getattr(prepared, split)) for split in prepared.prepared_splits)
        lines.append(
            f"time:      {seconds:.1f} s ({', '.join(prepared.prepared_splits)} tokenized: "
            f"{tokens / max(prepared.seconds, 1e-9):,.0f} tokens/s)"
        )
    else:
        lines.append(f"time:      {seconds:.1f} s (already prepared: nothing tokenized)")
    vocabulary = prepared.vocabulary
    lines.append(f"vocabulary: {vocabulary.kind}, {vocabulary.size:,} ids ({vocabulary!r})")
    lines.append(f"location:  {prepared.train.path.parent}")
    return "\n".join(lines)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compose conf/config.yaml, prepare `data` (its vocabulary resolved against `model`, as
    training resolves it), print the summary."""
    config = instantiate(cfg.data, _convert_="all")
    start = time.perf_counter()
    try:
        schema.agree_vocabulary(instantiate(cfg.model, _convert_="all"), config)
        prepared = prepare(config)
    except (DataError, ConfigError) as error:
        log.error("DataError: %s", error)
        raise SystemExit(2) from error
    print(format_summary(prepared, time.perf_counter() - start), flush=True)


def cli() -> None:
    """`python -m gpt_oss.data` and the console script `gpt-oss-data`."""
    sys.argv[1:1] = NO_RUN_DIR
    main()


if __name__ == "__main__":
    cli()
