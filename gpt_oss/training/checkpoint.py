"""Our checkpoints, in one place: the file format, which checkpoint a path holds, and what a
resume checks and restores.

Format: one torch zip file per snapshot (`checkpoints/last.pt`, `best.pt`) holding only tensors
and plain values (dicts, lists, numbers, strings), written atomically (gpt_oss.files). Loading
first verifies the CRC-32 that the zip records for every entry (torch.save writes them; we keep
the option on), so a flipped bit is refused naming the file, then unpickles with
`weights_only=True`, so a crafted file cannot run code. A sharded checkpoint (ddp/fsdp runs) is a
directory holding SHARDED_STATE beside torch.distributed.checkpoint's files (see
gpt_oss.training.checkpoint_sharded).
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt_oss.files import DiskFullError, atomic_write, is_temporary
from gpt_oss.model.config import IMPLEMENTATION_FIELDS, ModelConfig
from gpt_oss.model.model import GptOss, yarn_inverse_frequencies
from gpt_oss.model.tokenizer import VOCAB_SIZE
from gpt_oss.model.vocabulary import Vocabulary, VocabularyError, vocabulary_from_dict

FORMAT = "gpt-oss-lab/1"
SHARDED_STATE = "trainer.pt"  # rank 0's training state inside a sharded checkpoint directory
_ZIP_OVERHEAD = 1 << 20  # headers, the pickle, alignment: generous for the free-space check


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, corrupt, unsafe, or does not fit the run."""


# ------------------------------------------------------------------------------ writing


def payload_bytes(payload: Any) -> int:
    """Bytes of the tensor storages in a (nested) payload: about the size of its file."""
    storages: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)

    visit(payload)
    return sum(storages.values())


def atomic_save(payload: Any, path: str | Path) -> Path:
    """torch.save to a temporary beside `path`, fsync, rename over it. The zip records a CRC-32
    per entry (read_checkpoint verifies them). CheckpointError when the disk is full, naming the
    path and the size; the previous file at `path` is then untouched."""
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        return atomic_write(
            path, lambda f: torch.save(payload, f), payload_bytes(payload) + _ZIP_OVERHEAD
        )
    except DiskFullError as error:
        raise CheckpointError(str(error)) from error
    finally:
        torch.serialization.set_crc32_options(crc)


def save_checkpoint(path: str | Path, model: GptOss, **state: Any) -> Path:
    """Write model weights and config plus any training state (optimizer, step, ...): tensors
    and plain values only (they load with weights_only=True).

    state["vocabulary"] (Vocabulary.to_dict(), plain data) is the map from o200k ids to the
    model's ids, which loading.load_with_vocabulary gives back to generate and evaluate.
    """
    payload = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        **state,
    }
    return atomic_save(payload, path)


def checkpoint_vocabulary(payload: dict[str, Any], where: str | Path) -> Vocabulary | None:
    """The vocabulary stored with a checkpoint: its map when it has one, else the full one for
    a 201088-id model; None for a model of raw ids (no map, another size: e.g. a test model).
    CheckpointError when the map is damaged or does not fit the model's vocab_size."""
    vocab_size = payload["model_config"].get("vocab_size")
    if payload.get("vocabulary") is None:
        return vocabulary_from_dict(None) if vocab_size == VOCAB_SIZE else None
    try:
        vocabulary = vocabulary_from_dict(payload["vocabulary"])
    except VocabularyError as error:
        raise CheckpointError(f"{where}: its vocabulary is unusable: {error}") from error
    if vocabulary.size != vocab_size:
        raise CheckpointError(
            f"{where}: its {vocabulary.kind} vocabulary has {vocabulary.size} ids but the model's "
            f"vocab_size is {vocab_size}"
        )
    return vocabulary


# ------------------------------------------------------------------------------ reading


def verify_checksums(path: str | Path) -> None:
    """CheckpointError naming the file when it is not a whole zip or an entry's CRC-32 differs
    from the one recorded when it was written (reads the whole file, ~1-2 GB/s)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a checkpoint file ({error})"
        ) from error
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: the checksum of its entry {bad!r} differs from the one "
            "recorded when it was written (a flipped bit or a damaged copy); use another "
            "checkpoint (best.pt or last.pt) or train again"
        )


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True
) -> dict[str, Any]:
    """Load one of our checkpoint files, safely; errors name the file and what is wrong.

    verify=True checks every CRC-32 first. verify=False memory-maps the file instead and reads
    only what is used (for a quick look at step and configs; the tensors are not checked).
    Objects other than tensors and plain values are refused (weights_only), never run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if verify:
        verify_checksums(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=not verify)
    except pickle.UnpicklingError as error:
        reason = next((line for line in str(error).splitlines() if "global" in line.lower()), "")
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values, which could "
            f"run code when loaded: refused. {reason.strip()} (a file from an older gpt-oss-lab "
            "or from elsewhere; load only checkpoints you trust, and never with weights_only=False)"
        ) from error
    except Exception as error:  # a truncated or foreign file: say which file
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpt-oss-lab checkpoint (expected format {FORMAT})")
    return payload


# ------------------------------------------------------------------------------ which checkpoint


def find_checkpoint(
    path: str | Path, names: Sequence[str] = ("best", "last"), sharded: bool | None = False
) -> Path | None:
    """The checkpoint `path` holds, or None when it holds none.

    `path` itself when it is a checkpoint, else the first of `names` in path/checkpoints/ or
    path/ (a run directory or its checkpoints folder). sharded=False: files `<name>.pt`;
    True: directories `<name>/` holding SHARDED_STATE, or their `<name>.old/` twin (a save cut
    between its two renames); None: either kind, a file first. A temporary of an unfinished
    save is never a checkpoint (CheckpointError when given as `path`).
    """
    path = Path(path)
    if is_temporary(path):
        raise CheckpointError(
            f"{path} is the temporary of an unfinished save (its writer was killed), not a "
            "checkpoint; give the run directory or its checkpoints/last.pt"
        )
    kinds = (False, True) if sharded is None else (sharded,)
    candidates = [path] + [
        folder / name for folder in (path / "checkpoints", path) for name in names
    ]
    for candidate in candidates:
        for kind in kinds:
            if found := _as_checkpoint(candidate, kind, explicit=candidate == path):
                return found
    return None


def _as_checkpoint(path: Path, sharded: bool, explicit: bool) -> Path | None:
    if sharded:
        for candidate in (path, path.with_name(f"{path.name}.old")):
            if (candidate / SHARDED_STATE).is_file():
                return candidate
        return None
    file = path if explicit else path.with_name(f"{path.name}.pt")
    return file if file.is_file() else None


def no_checkpoint_message(path: str | Path, names: Iterable[str], sharded: bool) -> str:
    """What a path should have held, for the error when find_checkpoint found nothing."""
    where = " or ".join(f"checkpoints/{n}{'/' if sharded else '.pt'}" for n in names)
    kind = "a sharded checkpoint directory" if sharded else "a .pt checkpoint file"
    return f"no checkpoint at {path}: expected {kind}, or a run directory with {where}"


def resolve_resume(source: str, run_dir: str | Path, sharded: bool) -> Path | None:
    """The checkpoint `trainer.resume=source` names: "auto" = this run directory's last one
    (None while it has none: a fresh start); otherwise a checkpoint or a run directory (its
    last one). CheckpointError when there is none, or it is of the other kind (sharded for a
    single-process run, or the reverse)."""
    where = Path(run_dir) if source == "auto" else Path(source)
    if found := find_checkpoint(where, ("last",), sharded=sharded):
        return found
    if other := find_checkpoint(where, ("last",), sharded=not sharded):
        if sharded:
            raise CheckpointError(
                f"{other} is a single-process checkpoint: trainer.parallel=ddp|fsdp resumes "
                "sharded checkpoint directories (checkpoints/last/); resume it with "
                "trainer.parallel=none"
            )
        raise CheckpointError(
            f"{other} is a sharded checkpoint (trainer.parallel=ddp or fsdp): resume it with "
            "trainer.parallel=ddp or fsdp and as many processes, or take its weights with "
            "`python -m gpt_oss.consolidate`"
        )
    if source == "auto":
        return None
    raise CheckpointError(
        f"trainer.resume={source!r}: {no_checkpoint_message(where, ('last',), sharded)}; "
        "or give 'auto' (this run directory)"
    )


# ------------------------------------------------------------------------------ building


def build_with_state(
    config: ModelConfig, state: dict[str, torch.Tensor], device: str | torch.device
) -> GptOss:
    """Build on the meta device (no memory) and adopt the given tensors (already on `device`).
    CheckpointError when they do not fit the config."""
    with torch.device("meta"):
        model = GptOss(config)
    for i in range(config.num_hidden_layers):
        state.setdefault(
            f"layers.{i}.mlp.router.selection_bias", torch.zeros(config.num_experts, device=device)
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"weights do not fit the config: {error}") from error
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.inv_freq = yarn_inverse_frequencies(config).to(device)
    return model


# ------------------------------------------------------------------------------ resume


def capture_rng() -> dict[str, Any]:
    """The global generators' states as tensors and plain values (they load with weights_only)."""
    version, python_state, gauss = random.getstate()
    kind, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss},
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(key.astype(np.int64)),  # (624,) uint32 values
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global generators to a capture_rng() state."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    key = numpy["key"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["kind"], key, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def model_config_differences(saved: dict[str, Any], now: ModelConfig) -> dict[str, tuple]:
    """{field: (now, saved)} for the fields that change weights or maths (kernels may differ;
    a vocab_size of None follows the data and is compared once the data is prepared)."""
    return {
        name: (value, saved.get(name))
        for name, value in now.to_dict().items()
        if saved.get(name) != value
        and name not in IMPLEMENTATION_FIELDS
        and not (name == "vocab_size" and value is None)
    }


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """What a checkpoint records of its optimizer: the class name (AdamW, Muon, ...)."""
    return type(optimizer).__name__


def check_resumable(
    path: Path, payload: dict[str, Any], model_config: ModelConfig, optimizer: str | None = None
) -> None:
    """CheckpointError naming what stops `payload` (read from `path`) from resuming a run with
    this model config and optimizer (optimizer_name; None = not checked): another shape or
    maths, another optimizer, or weights without training state."""
    if "optimizer" not in payload and not path.is_dir():
        raise CheckpointError(
            f"{path} holds weights only (consolidated or exported): it cannot resume training"
        )
    if diff := model_config_differences(payload["model_config"], model_config):
        raise CheckpointError(
            f"{path} was trained with another model config: (now, checkpoint) = {diff}"
        )
    saved = payload.get("optimizer_name")
    if optimizer is not None and saved is not None and saved != optimizer:
        raise CheckpointError(
            f"{path} was trained with the {saved} optimizer, this run uses {optimizer}: resume "
            f"with the run's optimizer (optimizer={saved.lower()}), or start a new run"
        )


def check_vocabulary(path: Path, payload: dict[str, Any], vocabulary: Vocabulary | None) -> None:
    """CheckpointError when the checkpoint's token ids mean other tokens than `vocabulary`'s
    (the run's prepared data's)."""
    if (stored := checkpoint_vocabulary(payload, path)) != vocabulary:
        raise CheckpointError(
            f"{path} was trained with another vocabulary ({stored!r}) than this run's data "
            f"gives ({vocabulary!r}): its ids mean other tokens"
        )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path
) -> None:
    """optimizer.load_state_dict, with torch's mismatch errors as a CheckpointError that says
    what the checkpoint holds."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as error:
        groups = [len(g["params"]) for g in state.get("param_groups", [])]
        ours = [len(g["params"]) for g in optimizer.param_groups]
        raise CheckpointError(
            f"{path}: its optimizer state (parameter groups of {groups} tensors) does not fit "
            f"this run's {optimizer_name(optimizer)} ({ours}); was it trained with another "
            f"optimizer? ({error})"
        ) from error


def schedule_change(saved_run_config: dict[str, Any], run_config: dict[str, Any]) -> str | None:
    """How the learning-rate schedule goes on when a resume changes the run's length (None when
    it does not): it continues as saved unless schedule.total_steps itself changed."""
    saved_steps = (saved_run_config.get("trainer") or {}).get("max_steps")
    steps = (run_config.get("trainer") or {}).get("max_steps")
    saved_total = (saved_run_config.get("schedule") or {}).get("total_steps")
    total = (run_config.get("schedule") or {}).get("total_steps")
    if saved_total is None or total is None or (saved_steps, saved_total) == (steps, total):
        return None
    if total == saved_total:
        return (
            f"trainer.max_steps {saved_steps} -> {steps}: the schedule continues as saved "
            f"(schedule.total_steps={total}); past step {total} the learning rate stays at its "
            f"final value. To stretch it over the new length, give schedule.total_steps={steps}"
        )
    return (
        f"schedule.total_steps {saved_total} -> {total}: the schedule is redefined over {total} "
        "steps, from the resumed step on"
    )
