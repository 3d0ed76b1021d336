"""One file from a sharded checkpoint (written by trainer.parallel=ddp or fsdp).

    python -m gpt_oss.consolidate <run dir | checkpoint dir> [--out FILE] [--hf DIR] [--dtype bf16]

One process on the CPU, no process group: torch.distributed.checkpoint reads every rank's shards
into whole tensors, whatever the number of GPUs that wrote them. The result is our checkpoint
format (weights, model config, step, the run's config), by default beside the shards
(checkpoints/best/ -> checkpoints/best.pt), so `load_model`, generate and evaluate take the run
directory as they do for a single-process run. --hf also writes a Hugging Face directory. The
file holds no optimizer state: training resumes from the sharded checkpoint itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gpt_oss.model.hf import export_hf
from gpt_oss.model.precision import DTYPES
from gpt_oss.training.checkpoint import (
    CheckpointError,
    checkpoint_vocabulary,
    find_checkpoint,
    no_checkpoint_message,
    save_checkpoint,
)
from gpt_oss.training.checkpoint_sharded import consolidate


def consolidate_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    hf_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the sharded checkpoint at `path` as one .pt file (and optionally a Hugging Face
    directory); returns the .pt path."""
    directory = find_checkpoint(path, ("best", "last"), sharded=True)
    if directory is None:
        raise CheckpointError(
            no_checkpoint_message(path, ("best", "last"), sharded=True)
            + " (of a trainer.parallel=ddp|fsdp run)"
        )
    model, state = consolidate(directory, dtype)
    if out is None:
        out = directory.with_name(directory.name.removesuffix(".old") + ".pt")
    run_config = state.get("run_config")
    vocabulary = checkpoint_vocabulary(state, directory)  # checked before anything is written
    save_checkpoint(
        out,
        model,
        step=state["step"],
        run_config=run_config,
        source=str(directory),
        vocabulary=state.get("vocabulary"),
    )
    if hf_dir is not None:
        export_hf(model, hf_dir, dtype, vocabulary=vocabulary)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gpt_oss.consolidate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", type=Path, help="a run directory or a sharded checkpoint directory")
    parser.add_argument("--out", type=Path, help="the .pt file (default: beside the shards)")
    parser.add_argument("--hf", type=Path, help="also write a Hugging Face model directory here")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="cast floating tensors (default: as saved)"
    )
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype] if args.dtype else None
    try:
        out = consolidate_checkpoint(args.path, args.out, args.hf, dtype)
    except CheckpointError as error:
        raise SystemExit(f"CheckpointError: {error}") from error
    print(f"wrote {out}" + (f" and {args.hf}" if args.hf else ""))


if __name__ == "__main__":
    main()
