"""Sharded checkpoints (trainer.parallel=ddp or fsdp): every rank writes its shards of model
and optimizer with torch.distributed.checkpoint (DCP); rank 0 adds SHARDED_STATE, the training
state in our format (step, schedule, RNG, data position, ...) with the sha256 of every file DCP
wrote. The directory is written under a temporary name and renamed into place, so a run killed
mid-save keeps its previous checkpoint (`last.old/` between the two renames).

Loading checks the recorded checksums before DCP reads anything, reads DCP's `.metadata` (a
pickle) with an unpickler that builds only DCP's own metadata classes, and unpickles the
non-tensor entries with weights_only. So a directory whose files were altered, or one this
project did not write, is refused, and a crafted `.metadata` runs no code. Without a process
group (one process, no torchrun) save and load work too: rank 0 alone.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gpt_oss.files import sha256_file, temporary_path
from gpt_oss.model.config import ModelConfig
from gpt_oss.model.model import GptOss
from gpt_oss.training.checkpoint import (
    FORMAT,
    SHARDED_STATE,
    CheckpointError,
    atomic_save,
    build_with_state,
    find_checkpoint,
    read_checkpoint,
)

METADATA = ".metadata"  # DCP's index of the shards (a pickle)


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _in_group() else 0


def _world_size() -> int:
    return dist.get_world_size() if _in_group() else 1


def _barrier() -> None:
    if _in_group():
        dist.barrier()


def _gather(value: Any) -> list[Any]:
    """Every rank's value, on every rank ([value] without a process group)."""
    if not _in_group():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


# ------------------------------------------------------------------------------ writing


def save_sharded(
    directory: Path, model: GptOss, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    """Every rank writes its shards of model and optimizer (DCP); rank 0 adds the training
    state and the files' checksums, then renames the finished checkpoint over the previous one.
    Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = Path(directory)
    partial = Path(_gather(str(temporary_path(directory)))[0])  # rank 0's name on every rank
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=partial,
            no_dist=not _in_group(),
        )
    files = _merge(_gather(_rank_files(partial, _rank())))  # each rank hashes what it wrote
    if _rank() == 0:
        files[METADATA] = sha256_file(partial / METADATA)
        payload = {
            "format": FORMAT,
            "model_config": model.config.to_dict(),
            "files": files,
            **state,
        }
        atomic_save(payload, partial / SHARDED_STATE)
        _replace_directory(partial, directory)
    _barrier()
    return directory


def _rank_files(directory: Path, rank: int) -> dict[str, str]:
    """{name: sha256} of the shard files rank `rank` wrote (DCP names them __<rank>_<n>)."""
    return {p.name: sha256_file(p) for p in sorted(directory.glob(f"__{rank}_*"))}


def _merge(parts: list[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for part in parts:
        merged |= part
    return merged


def _replace_directory(new: Path, target: Path) -> None:
    """new -> target; the old target lives on as target.old until the rename is done."""
    old = target.with_name(f"{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ reading


def read_trainer_state(
    directory: Path, map_location: str | torch.device = "cpu", verify: bool = True
) -> dict[str, Any]:
    """The training state (step, schedule, RNG, data position, model config, file checksums)
    of a sharded checkpoint."""
    return read_checkpoint(Path(directory) / SHARDED_STATE, map_location, verify)


def verify_files(directory: Path, state: dict[str, Any]) -> None:
    """CheckpointError unless every file DCP will read is one whose sha256 SHARDED_STATE
    recorded. Ranks share the hashing (rank r checks every world_size-th file) and agree."""
    directory = Path(directory)
    recorded = state.get("files")
    if not isinstance(recorded, dict) or METADATA not in recorded:
        errors = [
            f"{directory} has no checksums of its files in {SHARDED_STATE}: it was not written "
            "by this version of gpt-oss-lab, and DCP's .metadata is a pickle that could run "
            "code, so it is refused"
        ]
    else:  # DCP reads only the files .metadata names, and .metadata is among the recorded
        names = sorted(recorded)[_rank() :: _world_size()]
        errors = [_file_error(directory / name, recorded[name]) for name in names]
    errors = [e for part in _gather([e for e in errors if e]) for e in part]
    if errors:
        raise CheckpointError("; ".join(errors))


def _file_error(path: Path, sha256: str) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    if sha256_file(path) != sha256:
        return (
            f"{path} is corrupt or was replaced: its sha256 differs from the one recorded when "
            "it was written"
        )
    return None


# Exactly what DCP pickles into .metadata (torch 2.13), and nothing that could run code.
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = name in _METADATA_CLASSES.get(module, ())
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if allowed or dtype or (module == "torch" and name == "Size"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP .metadata file")


def _safe_reader(directory: Path) -> Any:
    """DCP's FileSystemReader, reading .metadata with _MetadataUnpickler instead of pickle."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = Path(self.path) / METADATA
            try:
                with open(path, "rb") as handle:
                    metadata = _MetadataUnpickler(handle).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as error:
                raise CheckpointError(f"{path} is refused: {error}") from error
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(directory)


def _safe_planner() -> Any:
    """DCP's DefaultLoadPlanner, whose non-tensor entries must unpickle with weights_only first
    (DCP itself loads them with weights_only=False)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                torch.load(value, weights_only=True)  # raises on anything but plain values
            except pickle.UnpicklingError as error:
                raise CheckpointError(f"a checkpoint entry is refused: {error}") from error
            value.seek(0)
            super().load_bytes(read_item, value)

    return SafePlanner()


def _dcp_load(state: dict[str, Any], directory: Path) -> None:
    """dcp.load through the safe reader and planner; failures as a CheckpointError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = _safe_reader(directory)
    reader.read_metadata()  # our error, not DCP's wrapping of it, for a refused .metadata
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state, storage_reader=reader, planner=_safe_planner(), no_dist=not _in_group())
        except CheckpointException as error:
            raise CheckpointError(
                f"sharded checkpoint {directory} cannot be loaded: {error}"
            ) from error


def load_sharded(
    directory: Path, model: GptOss, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load model and optimizer shards in place, whatever the number of ranks that saved them;
    `state` is the checkpoint's read_trainer_state (its checksums are verified first)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    verify_files(directory, state)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optimizer_state}
    _dcp_load(shards, directory)
    set_state_dict(
        model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"]
    )


def consolidate(directory: Path, dtype: torch.dtype | None = None) -> tuple[GptOss, dict[str, Any]]:
    """One process, no process group: the whole model of a sharded checkpoint (on the CPU),
    and its training state."""
    found = find_checkpoint(directory, names=(), sharded=True)
    if found is None:
        raise CheckpointError(f"{directory} is not a sharded checkpoint: it has no {SHARDED_STATE}")
    state = read_trainer_state(found)
    verify_files(found, state)
    config = ModelConfig.from_dict(state["model_config"])
    with torch.device("meta"):
        shapes = GptOss(config).state_dict()
    tensors = {
        name: torch.empty(t.shape, dtype=dtype if dtype and t.is_floating_point() else t.dtype)
        for name, t in shapes.items()
    }
    _dcp_load({"model": tensors}, found)
    return build_with_state(config, tensors, "cpu").eval(), state
