"""Entry point: a run as a Hugging Face model directory that transformers, pipelines,
lm-evaluation-harness and vLLM load.

    gpt-oss-export <run dir | checkpoint | sharded checkpoint dir> <out dir> [--dtype bf16]
        [--max-shard-size 5GB] [--push-to-hub USER/NAME [--private]]

Writes config.json, safetensors weights (huggingface_hub's sharding writer, an index when there
are several shards), tokenizer.json + tokenizer_config.json (o200k_harmony, encoding exactly as
gpt_oss's tokenizer), generation_config.json and a model card (README.md). A run directory
exports its best checkpoint (else its last); a run of trainer.parallel=ddp|fsdp is consolidated
on the CPU first. `--push-to-hub` uploads the directory through huggingface_hub (needs network
and a token: `hf auth login` or HF_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from gpt_oss.model.hf import export_hf
from gpt_oss.model.precision import DTYPES
from gpt_oss.paths import conf_dir
from gpt_oss.training.checkpoint import CheckpointError
from gpt_oss.training.weights import load_weights

log = logging.getLogger(__name__)


def generation_config(endoftext_id: int | None) -> dict[str, Any]:
    """generation_config.json: stop and pad at <|endoftext|> (the model's id for it), and sample
    as `python -m gpt_oss.generate` does by default (conf/generate.yaml)."""
    defaults = yaml.safe_load((conf_dir() / "generate.yaml").read_text())
    values = {k: defaults[k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")}
    if endoftext_id is not None:
        values |= dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), endoftext_id)
    return {"do_sample": values["temperature"] > 0, **values}


def export_run(
    source: str | Path,
    out: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str | None = None,
    command: str | None = None,
    name: str | None = None,
) -> Path:
    """Export the weights at `source` (see gpt_oss.weights.load_weights) as a complete Hugging
    Face model directory `out`; returns it. The model card names the model `name` (default: the
    directory's name) and records `command`."""
    from gpt_oss.model.hf_card import model_card, training_facts
    from gpt_oss.model.hf_tokenizer import build_tokenizer, save_tokenizer

    out = Path(out)
    found = load_weights(source)
    config, vocabulary = found.model.config, found.vocabulary
    tokenizer = None  # built before anything is written: it fails without transformers
    if vocabulary is not None:
        tokenizer = build_tokenizer(config.max_position_embeddings, vocabulary)
    else:
        log.warning(
            "vocab_size=%d and no vocabulary map: exporting no tokenizer", config.vocab_size
        )
    export_hf(found.model, out, dtype, max_shard_size, vocabulary=vocabulary)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    endoftext = vocabulary.endoftext_id if vocabulary is not None else None
    (out / "generation_config.json").write_text(
        json.dumps(generation_config(endoftext), indent=2) + "\n"
    )
    facts = training_facts(found.state, found.run_dir)
    command = command or shlex.join(["gpt-oss-export", str(source), str(out)])
    compact = vocabulary is not None and vocabulary.kind == "compact"
    model_card(config, facts, name or out.name, command, compact).save(out / "README.md")
    return out


def push_to_hub(
    directory: str | Path, repo_id: str, private: bool = False, token: str | None = None
) -> str:
    """Create the model repository (if needed) and upload `directory` to it; returns the
    commit URL. Raises huggingface_hub's errors (no network, no token, no permission)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        repo_type="model",
        commit_message=f"Upload {Path(directory).name}, exported by gpt-oss-lab",
    )
    return str(getattr(commit, "commit_url", commit))


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that already holds files, unless told to."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file: give a directory to export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} is not empty: choose a new directory, or pass --overwrite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpt-oss-export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "source", type=Path, help="a run directory, a checkpoint, or a sharded checkpoint directory"
    )
    parser.add_argument("out", type=Path, help="the Hugging Face model directory to write")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="cast floating weights (default: as saved)"
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file (default 5GB)"
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="then upload to this Hub repository (user/name)"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty out directory"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["gpt-oss-export", *(sys.argv[1:] if argv is None else argv)])
    try:
        check_out_dir(args.out, args.overwrite)
        dtype = DTYPES.get(args.dtype)
        out = export_run(
            args.source, args.out, dtype, args.max_shard_size, command, args.push_to_hub
        )
    except (CheckpointError, ValueError, RuntimeError) as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    if args.push_to_hub:
        try:
            print(f"pushed to {push_to_hub(out, args.push_to_hub, args.private)}")
        except Exception as error:  # network, token, permission: the export itself is done
            later = f"hf upload {args.push_to_hub} {out}"
            reason = f"{type(error).__name__}: {error}"
            print(f"push to {args.push_to_hub} failed ({reason}); the export is in {out}: "
                  f"upload it later with `{later}`", file=sys.stderr)  # fmt: skip
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
