"""Resume as a user types it: `trainer.resume=<run dir>` alone takes the run's own config, only
the overrides given now change it (and are reported), the schedule rule is said, a finished
run says so, and a refused resume changes no byte of the run directory."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_train import compose_run, read_records, tiny_overrides

from gpt_oss.model.config import ModelConfig
from gpt_oss.train import run
from gpt_oss.training.checkpoint import CheckpointError, check_resumable, read_checkpoint
from gpt_oss.training.optim import warmup_cosine

STEPS = [
    "trainer.max_steps=4",
    "trainer.checkpoint_every=2",
    "trainer.eval_every=2",
    "trainer.log_every=1",
]


def train_cli(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gpt_oss.train", *overrides]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def snapshot(directory: Path) -> dict[str, str]:
    """sha256 of every file under directory, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny run trained to its end (4 steps) from the command line."""
    work = tmp_path_factory.mktemp("resume")
    run_dir = work / "first"
    result = train_cli(work, *tiny_overrides(work, *STEPS), f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_resuming_a_finished_run_by_its_directory_alone_says_it_is_finished(finished, tmp_path):
    before = snapshot(finished)
    result = train_cli(
        tmp_path, f"trainer.resume={finished}", f"hydra.run.dir={tmp_path / 'again'}"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "already finished: it is at step 4 of trainer.max_steps=4" in result.stdout
    assert "finished 4 steps" not in result.stdout  # no summary of a run that did not happen
    assert snapshot(finished) == before


@pytest.mark.slow
def test_resuming_by_directory_with_more_steps_continues_and_says_what_changed(finished, tmp_path):
    before, new_dir = snapshot(finished), tmp_path / "longer"
    result = train_cli(tmp_path, f"trainer.resume={finished}", "trainer.max_steps=6",
                       f"hydra.run.dir={new_dir}")  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "resume: trainer.max_steps: 4 -> 6" in out
    assert "the schedule continues as saved (schedule.total_steps=4)" in out
    train = {r["step"]: r for r in read_records(new_dir) if r["split"] == "train"}
    assert sorted(train) == [1, 2, 3, 4, 5, 6]  # the history up to step 4, then two new steps
    assert math.isclose(train[5]["lr"], train[4]["lr"]) and math.isclose(
        train[6]["lr"], train[4]["lr"]
    )
    config = yaml.safe_load((new_dir / "config.yaml").read_text())
    assert config["model"]["hidden_size"] == 64 and config["trainer"]["max_steps"] == 6
    overrides = yaml.safe_load((new_dir / ".hydra" / "overrides.yaml").read_text())
    assert "model=tiny" in overrides and "trainer.max_steps=6" in overrides
    assert "trainer.max_steps=4" not in overrides
    assert snapshot(finished) == before  # the continued run is only read


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, named",
    [("optimizer=muon", "optimizer=muon on a resume would change optimizer._target_"),
     ("model.num_experts=8", "num_experts")],
)  # fmt: skip
def test_a_refused_resume_leaves_the_run_directory_byte_identical(
    finished, tmp_path, change, named
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    assert {".hydra/overrides.yaml", "config.yaml", "train.log", "checkpoints/last.pt"} <= set(
        before
    )
    result = train_cli(tmp_path, *tiny_overrides(tmp_path, *STEPS), change, "trainer.resume=auto",
                       f"hydra.run.dir={run_dir}")  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert named in result.stderr
    assert snapshot(run_dir) == before


def test_another_optimizer_is_named_before_any_data_is_prepared(tmp_path):
    first = tmp_path / "first"
    run(compose_run(*tiny_overrides(tmp_path, "trainer.max_steps=2")), first)
    shutil.rmtree(tmp_path / "cache")
    cfg = compose_run(*tiny_overrides(tmp_path, "optimizer=muon", f"trainer.resume={first}"))
    with pytest.raises(
        CheckpointError, match=r"trained with optimizer=adamw .*this run uses optimizer=muon"
    ):
        run(cfg, tmp_path / "second")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "second").exists()
    payload = read_checkpoint(first / "checkpoints" / "last.pt")
    assert payload["optimizer_name"] == "AdamW"
    config = ModelConfig.from_dict(payload["model_config"])
    with pytest.raises(
        CheckpointError, match="trained with the AdamW optimizer, this run uses Muon"
    ):
        check_resumable(first / "checkpoints" / "last.pt", payload, config, "Muon")


def test_a_schedule_redefined_over_more_steps_is_said_and_followed(tmp_path, caplog):
    first, second = tmp_path / "first", tmp_path / "second"
    run(compose_run(*tiny_overrides(tmp_path, *STEPS)), first)
    # composed afresh, schedule.total_steps follows trainer.max_steps: the schedule is redefined
    cfg = compose_run(
        *tiny_overrides(tmp_path, *STEPS, "trainer.max_steps=8", f"trainer.resume={first}")
    )
    with caplog.at_level("INFO", logger="gpt_oss.training.trainer"):
        run(cfg, second)
    assert "schedule.total_steps 4 -> 8: the schedule is redefined over 8 steps" in caplog.text
    lr = {r["step"]: r["lr"] for r in read_records(second) if r["split"] == "train"}
    peak, reference = 3e-3, warmup_cosine(_optimizer(3e-3), total_steps=8)
    for step in range(1, 9):
        reference.step()
        if step > 4:
            assert math.isclose(lr[step], reference.get_last_lr()[0], rel_tol=1e-9), step
    assert lr[4] == pytest.approx(0.1 * peak)  # the first run ended at its minimum


def _optimizer(lr: float):
    import torch

    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
