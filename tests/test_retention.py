"""Runs do not fill the disk: best.pt holds weights only unless asked, a full best saved at the
step of last.pt is a hard link to it, snapshots beyond trainer.checkpoint_keep are deleted, and
a run that fails before training (or `gpt_oss.data`) leaves no run directory behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import compose_run, read_records, tiny_overrides

from gpt_oss.model.config import ConfigError
from gpt_oss.train import run
from gpt_oss.training.checkpoint import read_checkpoint
from gpt_oss.training.loading import load_model
from gpt_oss.training.retention import keep_snapshot, link_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["trainer.max_steps=8", "trainer.eval_every=4", "trainer.checkpoint_every=2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One prepared synthetic corpus for every run of this module."""
    return tmp_path_factory.mktemp("shared")


def train(cache: Path, run_dir: Path, *extra: str) -> Path:
    run(compose_run(*tiny_overrides(cache, *STEPS, *extra)), run_dir)
    return run_dir / "checkpoints"


def best_val_step(run_dir: Path) -> int:
    val = [r for r in read_records(run_dir) if r["split"] == "val"]
    return min(val, key=lambda r: r["loss"])["step"]


@pytest.mark.slow
def test_best_is_weights_only_by_default_and_loads(cache, tmp_path):
    folder = train(cache, tmp_path / "run")
    best, last = read_checkpoint(folder / "best.pt"), read_checkpoint(folder / "last.pt")
    assert "optimizer" not in best and "optimizer" in last
    assert best["step"] == best_val_step(tmp_path / "run") and best["tokens_seen"] > 0
    # AdamW keeps two moments per weight: the weights-only file is about a third of the full one
    assert (folder / "best.pt").stat().st_size < 0.4 * (folder / "last.pt").stat().st_size
    assert not (folder / "best.pt").samefile(folder / "last.pt")
    assert load_model(folder / "best.pt").config.hidden_size == 64
    assert not list(folder.glob("step_*"))  # checkpoint_keep=1: last.pt only


@pytest.mark.slow
def test_a_full_best_saved_with_last_is_a_hard_link_to_it(cache, tmp_path):
    folder = train(cache, tmp_path / "run", "trainer.checkpoint_best=full")
    assert best_val_step(tmp_path / "run") == 8  # the loss still falls at the last evaluation
    assert (folder / "best.pt").samefile(folder / "last.pt")
    assert "optimizer" in read_checkpoint(folder / "best.pt")


@pytest.mark.slow
def test_checkpoint_keep_keeps_the_most_recent_snapshots_as_links(cache, tmp_path):
    folder = train(cache, tmp_path / "run", "trainer.checkpoint_keep=3")
    assert sorted(p.name for p in folder.glob("step_*")) == [
        "step_00000004.pt", "step_00000006.pt", "step_00000008.pt"]  # fmt: skip
    assert (folder / "step_00000008.pt").samefile(folder / "last.pt")
    assert read_checkpoint(folder / "step_00000004.pt")["step"] == 4


@pytest.mark.slow
def test_no_checkpoints_at_all_when_asked(cache, tmp_path):
    train(cache, tmp_path / "run", "trainer.checkpoint_keep=0", "trainer.checkpoint_best=none")
    assert read_records(tmp_path / "run")[-1]["step"] == 8  # trained, metrics written
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, field",
    [
        ("trainer.checkpoint_keep=-1", "checkpoint_keep"),
        ("trainer.checkpoint_best=some", "checkpoint_best"),
    ],
)
def test_bad_retention_settings_name_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError, match=f"trainer.{field}=.*valid"):
        run(compose_run(*tiny_overrides(tmp_path, override)), tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # before any data preparation


def test_replacing_last_leaves_a_linked_copy_whole(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"step 2")
    link_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    (tmp_path / "new").write_bytes(b"step 4")
    os.replace(tmp_path / "new", tmp_path / "last.pt")  # how every save lands
    assert (tmp_path / "best.pt").read_bytes() == b"step 2"


def test_sharded_snapshots_are_linked_directories(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / "last").mkdir(exist_ok=True)
        (tmp_path / "last" / "shard").write_text(str(step))
        kept = keep_snapshot(tmp_path, step, keep=2, sharded=True)
    assert [p.name for p in kept] == ["step_00000004", "step_00000006"]
    assert not (tmp_path / "step_00000002").exists()
    assert (tmp_path / "step_00000006" / "shard").samefile(tmp_path / "last" / "shard")


def cli(module: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_a_config_that_fails_leaves_no_run_directory(tmp_path):
    done = cli("gpt_oss.train", tmp_path, "model=tiny", "logger=none", "trainer.max_steps=0")
    assert done.returncode == 2
    assert "trainer.max_steps=0 is invalid" in done.stderr + done.stdout  # on the console
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_run_that_fails_after_hydra_made_its_directory_removes_it(tmp_path):
    """Data that turns out unreadable only while it is prepared: the run directory Hydra made
    (.hydra/, train.log) goes, and its date folder with it."""
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    done = cli("gpt_oss.train", tmp_path, "model=tiny", "logger=none", "data=text",
               f"data.train_files=[{tmp_path / 'broken.jsonl'}]",
               f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert done.returncode != 0
    assert "broken.jsonl" in done.stderr + done.stdout  # the error names the file, on the console
    assert not list((tmp_path / "outputs" / "runs").iterdir())  # no run dir, no empty date folder


def test_a_failed_run_never_removes_a_directory_holding_anything_else(tmp_path):
    run_dir = tmp_path / "earlier"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    done = cli("gpt_oss.train", tmp_path, "model=tiny", "logger=none", "trainer.max_steps=0",
               f"hydra.run.dir={run_dir}")  # fmt: skip
    assert done.returncode == 2
    assert (run_dir / "metrics.jsonl").read_text() == json.dumps({"step": 1}) + "\n"


def test_preparing_data_writes_token_files_only(tmp_path):
    done = cli("gpt_oss.data", tmp_path, "data=synthetic", "data.synthetic_train_stories=40",
               "data.synthetic_val_stories=10", f"data.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train:" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no outputs/, no data.log
