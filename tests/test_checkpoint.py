"""Checkpoints: nothing loaded from a file runs code, a damaged file is refused naming it, the
temporaries of killed writers are removed and never taken for checkpoints, a full disk is said
in words, and one function says which checkpoint a path holds."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from test_train import compose_run, tiny_overrides

from gpt_oss import evaluate, generate
from gpt_oss.consolidate import consolidate_checkpoint
from gpt_oss.data.config import DataConfig, DataError
from gpt_oss.data.prepare import prepare
from gpt_oss.data.tokens import TokenFile
from gpt_oss.files import is_temporary, remove_stale_temporaries, temporary_path
from gpt_oss.model.hf import export_hf
from gpt_oss.train import run
from gpt_oss.training.checkpoint import (
    FORMAT,
    CheckpointError,
    capture_rng,
    find_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from gpt_oss.training.checkpoint_sharded import METADATA, consolidate, save_sharded
from gpt_oss.training.loading import load_model
from gpt_oss.training.optim import adamw

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls open(marker, "w"): code run from a file, visible as a new file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path: Path, marker: Path, model) -> Path:
    """A file that looks like one of our checkpoints and runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model_config": model.config.to_dict(),
               "model": model.state_dict(), "run_config": {}, "hook": _Payload(marker)}  # fmt: skip
    torch.save(payload, path)
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load creates the marker
    assert marker.exists()
    marker.unlink()
    return path


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    probe = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(probe.stdout)


def _compose(config: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config, overrides=list(overrides))


# ------------------------------------------------------------------ nothing runs from a file


LOAD_PATHS = {
    "load_model file": lambda path, run_dir, tmp: load_model(path),
    "load_model run dir": lambda path, run_dir, tmp: load_model(run_dir),
    "generate checkpoint=file": lambda path, run_dir, tmp: generate.run(
        _compose("generate", f"checkpoint={path}", "max_new_tokens=1")
    ),
    "generate checkpoint=run dir": lambda path, run_dir, tmp: generate.run(
        _compose("generate", f"checkpoint={run_dir}", "max_new_tokens=1")
    ),
    "evaluate": lambda path, run_dir, tmp: evaluate.run(
        _compose("evaluate", f"checkpoint={run_dir}", f"text_file={_text(tmp)}")
    ),
    "trainer.resume": lambda path, run_dir, tmp: run(
        compose_run(*tiny_overrides(tmp, f"trainer.resume={run_dir}")), tmp / "resumed"
    ),
}


def _text(tmp: Path) -> Path:
    path = tmp / "stories.txt"
    path.write_text("Once upon a time there was a cat.<|endoftext|>The end.")
    return path


@pytest.mark.parametrize("load", LOAD_PATHS, ids=list(LOAD_PATHS))
def test_a_crafted_checkpoint_runs_nothing_in_any_load_path(load, make_model, tmp_path):
    marker, run_dir = tmp_path / "marker", tmp_path / "run"
    path = _crafted(run_dir / "checkpoints" / "best.pt", marker, make_model())
    shutil.copy(path, run_dir / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        LOAD_PATHS[load](path, run_dir, tmp_path)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()  # trainer.resume refused before preparing data


@pytest.fixture
def sharded(make_model, tmp_path) -> Path:
    """A real sharded checkpoint (DCP files + trainer.pt) written by one process."""
    model = make_model()
    optimizer = adamw(model)
    model.loss(*torch.randint(0, 1000, (2, 2, 16))).loss.backward()
    optimizer.step()
    state = {"step": 1, "run_config": {"trainer": {"seq_len": 16}}}
    return save_sharded(tmp_path / "run" / "checkpoints" / "last", model, optimizer, state)


def test_a_sharded_checkpoint_round_trips_through_consolidate(sharded, make_model):
    model, state = consolidate(sharded)
    assert state["step"] == 1 and set(state["files"]) == {METADATA, "__0_0.distcp"}
    out = consolidate_checkpoint(sharded.parent.parent)
    assert out == sharded.parent / "last.pt" and read_checkpoint(out)["step"] == 1
    inputs = torch.randint(0, 1000, (1, 8))
    torch.testing.assert_close(load_model(out)(inputs), model(inputs))


def test_a_crafted_sharded_metadata_runs_nothing(sharded, tmp_path):
    marker = tmp_path / "marker"
    (sharded / METADATA).write_bytes(torch.serialization.pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata is corrupt or was replaced"):
        consolidate_checkpoint(sharded)
    # Someone who also rewrites trainer.pt's checksums still runs nothing: .metadata is read
    # by an unpickler that builds only DCP's metadata classes.
    state = read_checkpoint(sharded / "trainer.pt")
    state["files"][METADATA] = hashlib.sha256((sharded / METADATA).read_bytes()).hexdigest()
    torch.save(state, sharded / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"\.metadata is refused: io\.open is not allowed"):
        consolidate_checkpoint(sharded)
    assert not marker.exists()


def test_a_crafted_trainer_state_in_a_sharded_checkpoint_runs_nothing(
    sharded, make_model, tmp_path
):
    marker = tmp_path / "marker"
    _crafted(sharded / "trainer.pt", marker, make_model())
    with pytest.raises(CheckpointError, match="could run code"):
        consolidate_checkpoint(sharded.parent.parent)
    assert not marker.exists()


def test_a_sharded_checkpoint_without_recorded_checksums_is_refused(sharded):
    state = read_checkpoint(sharded / "trainer.pt")
    del state["files"]
    torch.save(state, sharded / "trainer.pt")
    with pytest.raises(CheckpointError, match="no checksums of its files"):
        consolidate(sharded)


def test_a_safetensors_index_may_name_only_files_beside_it(make_model, tmp_path):
    directory = export_hf(make_model(), tmp_path / "hf")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(directory / "model.safetensors", outside)
    for name in ("../outside.safetensors", str(outside)):
        index = {"metadata": {}, "weight_map": {"lm_head.weight": name}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match="not a file inside"):
            load_model(directory)


# ------------------------------------------------------------------ integrity


def _flip_byte_in_entry(path: Path, suffix: str) -> None:
    """Flip one bit in the middle of the zip entry whose name ends with suffix (a tensor's data)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if i.filename.endswith(suffix)),
                   key=lambda i: i.file_size)  # fmt: skip
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(handle.read(4), dtype="<u2")
        handle.seek(
            info.header_offset + 30 + int(name_length) + int(extra_length) + info.file_size // 2
        )
        byte = handle.read(1)[0]
        handle.seek(-1, 1)
        handle.write(bytes([byte ^ 0x40]))


def test_a_flipped_bit_in_tensor_data_is_refused_naming_the_file(make_model, tmp_path):
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", make_model(), step=3)
    _flip_byte_in_entry(path, "data/0")  # the data of the first tensor stored
    loaded = torch.load(path, weights_only=True)  # torch alone does not notice
    assert not torch.equal(
        loaded["model"]["embed_tokens.weight"], make_model().state_dict()["embed_tokens.weight"]
    )
    for load in (read_checkpoint, load_model, lambda p: load_model(p.parent.parent)):
        with pytest.raises(CheckpointError, match=f"{path}.*corrupt.*checksum"):
            load(path)


def test_a_truncated_checkpoint_is_refused_naming_the_file(make_model, tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", make_model())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{path} is truncated"):
        load_model(path)


def test_a_flipped_byte_in_a_shard_is_refused_naming_the_file(sharded):
    shard = sharded / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{shard} is corrupt"):
        consolidate(sharded)


def test_a_truncated_safetensors_file_is_a_checkpoint_error_naming_it(make_model, tmp_path):
    directory = export_hf(make_model(), tmp_path / "hf")
    shard = directory / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{shard}.*(truncated|corrupt)"):
        load_model(directory)


def _prepared_synthetic(tmp_path: Path):
    config = DataConfig(source="synthetic", name="synthetic", synthetic_train_stories=200,
                        synthetic_val_stories=20, cache_dir=str(tmp_path / "cache"),
                        num_proc=1)  # fmt: skip
    return config, prepare(config, progress=False)


def test_edited_token_metadata_is_refused_naming_the_file(tmp_path):
    config, prepared = _prepared_synthetic(tmp_path)
    meta = prepared.val.path.with_suffix(".json")
    metadata = json.loads(meta.read_text())
    metadata["num_bytes"] = metadata["num_bytes"] * 2  # would halve bits per byte
    meta.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=f"{meta} was edited or is corrupt"):
        TokenFile.open(prepared.val.path)
    with pytest.raises(DataError, match="edited"):
        prepare(config, progress=False)  # never silently re-made either


# ------------------------------------------------------------------ leftovers


def test_temporaries_of_dead_writers_are_removed_and_never_checkpoints(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    dead, live = _dead_pid(), temporary_path(folder / "last.pt")
    stale_file = folder / f".last.pt.{dead}.tmp"  # the name older versions wrote
    stale_dir = folder / f".last.{dead}@{socket.gethostname()}.tmp"
    for path in (stale_file, live):
        path.write_bytes(b"partial")
    (stale_dir / "trainer.pt").parent.mkdir()
    (stale_dir / "trainer.pt").write_bytes(b"partial")
    assert all(map(is_temporary, (stale_file, stale_dir, live)))
    assert find_checkpoint(tmp_path / "run", ("last",), sharded=None) is None
    with pytest.raises(CheckpointError, match="temporary of an unfinished save"):
        find_checkpoint(stale_file)
    assert remove_stale_temporaries(folder) == sorted([stale_file, stale_dir])
    assert sorted(folder.iterdir()) == [live]  # this process is alive: its write is kept


def test_a_run_removes_stale_checkpoint_and_data_temporaries_on_start(tmp_path):
    dead = _dead_pid()
    config, prepared = _prepared_synthetic(tmp_path)
    stale_data = prepared.directory / f".train.bin.{dead}.tmp"
    stale_data.write_bytes(b"\0" * 4096)
    prepare(config, progress=False)
    assert not stale_data.exists()

    run_dir = tmp_path / "run"
    stale_checkpoint = run_dir / "checkpoints" / f".last.pt.{dead}.tmp"
    stale_checkpoint.parent.mkdir(parents=True)
    stale_checkpoint.write_bytes(b"partial")
    run(
        compose_run(*tiny_overrides(tmp_path, "trainer.max_steps=1", "trainer.resume=auto")),
        run_dir,
    )
    assert not stale_checkpoint.exists()  # resume=auto saw no checkpoint and started fresh
    assert read_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 1


# ------------------------------------------------------------------ which checkpoint


def test_find_checkpoint_answers_for_files_run_dirs_and_sharded_dirs(tmp_path):
    run_dir, folder = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert find_checkpoint(run_dir) is None
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"x")
    assert find_checkpoint(run_dir) == folder / "last.pt"
    (folder / "best.pt").write_bytes(b"x")
    assert find_checkpoint(run_dir) == folder / "best.pt"  # best before last
    assert find_checkpoint(folder, ("last",)) == folder / "last.pt"
    assert find_checkpoint(folder / "last.pt", sharded=None) == folder / "last.pt"
    assert find_checkpoint(run_dir, sharded=True) is None
    (folder / "best.old").mkdir()
    (folder / "best.old" / "trainer.pt").write_bytes(b"x")
    assert find_checkpoint(run_dir, sharded=True) == folder / "best.old"
    assert find_checkpoint(folder / "best", names=(), sharded=True) == folder / "best.old"


# ------------------------------------------------------------------ RNG state


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ------------------------------------------------------------------ a full disk


def _tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)  # fmt: skip
    return probe.returncode == 0


DISK_FULL = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from conftest import UNIT_TEST_SHAPE
    from gpt_oss.training.checkpoint import CheckpointError, save_checkpoint
    from gpt_oss.model.config import ModelConfig
    from gpt_oss.files import DiskFullError, atomic_write
    from gpt_oss.model.model import GptOss

    disk = Path(sys.argv[1])
    (disk / "checkpoints").mkdir()
    previous = disk / "checkpoints" / "last.pt"
    previous.write_bytes(b"the previous checkpoint")
    model = GptOss(ModelConfig(**UNIT_TEST_SHAPE))
    try:  # the free-space check before writing
        save_checkpoint(previous, model)
    except CheckpointError as error:
        print("BEFORE:", error)
    try:  # the disk fills during the write (no size given, so no check first)
        atomic_write(previous, lambda f: torch.save(model.state_dict(), f))
    except DiskFullError as error:
        print("DURING:", error)
    print("PREVIOUS:", previous.read_bytes().decode())
    print("LEFT:", sorted(p.name for p in (disk / "checkpoints").iterdir()))
    """
)


@pytest.mark.skipif(not _tmpfs_available(), reason="needs unshare and tmpfs in a user namespace")
def test_a_full_disk_is_named_with_the_path_and_the_size_and_keeps_the_old_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    command = (
        f"mount -t tmpfs -o size=256k tmpfs {disk} && "
        f"{sys.executable} {script} {disk} {ROOT / 'tests'}"
    )
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    last = disk / "checkpoints" / "last.pt"
    assert f"BEFORE: no space left on device for {last}: it needs about" in out, out
    assert f"DURING: no space left on device writing {last}" in out, out
    assert "PREVIOUS: the previous checkpoint" in out
    assert "LEFT: ['last.pt']" in out  # no temporary left behind
