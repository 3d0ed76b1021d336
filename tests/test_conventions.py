"""Hydra conventions as lightning-hydra-template has them (issue 15, item 3): the `experiment`
group, `debug` configs, the `paths` group and `hparams_search=optuna`; every config of every
group composes, every experiment and debug config runs a step."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from gpt_oss import schema
from gpt_oss.model.config import ConfigError
from gpt_oss.schema import build
from gpt_oss.train import run as train_run
from gpt_oss.training.debugging import RepeatedBatches

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories_sample.jsonl"
STUDIES = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
DEBUG = sorted(p.stem for p in (CONF / "debug").glob("*.yaml") if p.stem != "default")


def compose_run(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def task_config(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------- every config of every group
def all_group_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML file of conf/ (hydra/ aside) and of experiments/."""
    options = [
        (group.name, option.stem)
        for group in sorted(CONF.iterdir())
        if group.is_dir() and group.name != "hydra"
        for option in sorted(group.glob("*.yaml"))
    ]
    studies = ROOT / "experiments"
    options += [("experiments", name) for name in STUDIES]
    options += [
        (f"experiments/{folder.name}", option.stem)
        for folder in sorted(studies.iterdir())
        if folder.is_dir()
        for option in sorted(folder.glob("*.yaml"))
    ]
    return options


@pytest.mark.parametrize("group, option", all_group_options())
def test_every_config_of_every_group_composes_and_builds(group, option):
    override = f"+{group}={option}" if group.startswith("experiments") else f"{group}={option}"
    if group.startswith("experiments/"):  # an arm or a scale: inside a study
        override = f"{group}={option}"
        study = group.split("/")[1]
        base = ["+experiments=expert_count"] if study == "scale" else [f"+experiments={study}"]
        cfg = compose_run(*base, override)
    else:
        cfg = compose_run(override)
    parts = build(cfg)  # every key known, every value in range, every group instantiated
    assert parts["model_config"].num_hidden_layers >= 1
    assert cfg.paths.data_dir == cfg.data.cache_dir


# ----------------------------------------------------------------------------- experiment
def test_each_study_is_an_option_of_the_experiment_group_and_nothing_else_is():
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == STUDIES


@pytest.mark.parametrize("study", STUDIES)
def test_experiment_name_gives_the_same_config_as_the_older_spelling(study):
    assert task_config(compose_run(f"experiment={study}")) == task_config(
        compose_run(f"+experiments={study}")
    )
    new = compose_run(f"experiment={study}", hydra_config=True)
    old = compose_run(f"+experiments={study}", hydra_config=True)
    assert new.name == study  # the study's deltas win over conf/config.yaml's
    assert new.hydra.sweeper.params == old.hydra.sweeper.params
    assert str(new.hydra.sweep.dir).startswith(f"outputs/multirun/{study}/")


def test_experiment_and_a_scale_of_the_study_combine():
    cfg = compose_run("experiment=expert_count", "experiments/scale=gpu")
    assert (cfg.model.hidden_size, cfg.data.source) == (512, "hub")


@pytest.mark.parametrize(
    "override", ["experiment=nonexistent", "+experiment=nonexistent", "+experiments=nonexistent"]
)
def test_an_unknown_experiment_fails_naming_it_and_the_valid_ones(override):
    group = override.lstrip("+").split("=")[0]
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as error:
        compose_run(override)
    message = str(error.value)
    assert f"{group}/nonexistent" in message
    if not override.startswith("+experiment="):
        assert "expert_count" in message  # Hydra lists the available options


def test_experiment_typed_with_plus_is_named_on_the_command_line_with_the_right_spelling():
    with pytest.raises(
        ConfigError,
        match=r"\+experiment=nonexistent is invalid: .*write experiment=nonexistent without the \+",
    ):
        schema.check_command_line(["+experiment=nonexistent"], schema.RunConfig)


@pytest.mark.parametrize("command", ["install=bash", "query=bash", "uninstall=bash"])
def test_shell_completion_commands_are_not_checked_as_overrides(command):
    schema.check_command_line(["-sc", command], schema.RunConfig)  # Hydra's, not our keys
    with pytest.raises(ConfigError, match=command.split("=")[0]):
        schema.check_command_line([command], schema.RunConfig)  # the same text as an override


@pytest.mark.parametrize("override", ["+experimnt=expert_count", "+trainer_steps=5", "+lr=0.1"])
def test_an_unknown_root_key_added_with_plus_fails_instead_of_training_the_default(override):
    key = override[1:].split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key} is not a valid key"):
        build(compose_run(override))


def test_an_unknown_plus_experiment_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt_oss.train",
            "+experiment=nonexistent",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "experiment=nonexistent" in result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- paths
def test_paths_hold_the_data_and_output_dirs_and_the_environment_variable_still_wins(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("GPT_OSS_DATA_DIR", raising=False)
    cfg = compose_run(hydra_config=True)
    assert cfg.paths.data_dir == str(ROOT / "data") == cfg.data.cache_dir
    assert cfg.paths.root_dir == str(ROOT)
    assert str(cfg.hydra.run.dir).startswith("outputs/runs/")
    monkeypatch.setenv("GPT_OSS_DATA_DIR", str(tmp_path / "tokens"))
    cfg = compose_run("paths.output_dir=/scratch/out", hydra_config=True)
    assert cfg.data.cache_dir == str(tmp_path / "tokens")
    assert str(cfg.hydra.run.dir).startswith("/scratch/out/runs/")
    assert str(cfg.hydra.sweep.dir).startswith("/scratch/out/multirun/")
    cfg = compose_run("paths.data_dir=/elsewhere", "paths.hf_cache_dir=/hf", "data=tinystories")
    assert (cfg.data.cache_dir, cfg.data.hf_cache_dir) == ("/elsewhere", "/hf")


# ------------------------------------------------------- one step of every study and debug
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> dict[str, Path]:
    """300 real stories (a slice of the shared sample) and one token cache for every run."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:300]
    (folder / "stories.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"file": folder / "stories.jsonl", "cache": folder / "cache"}


def one_step(corpus: dict[str, Path], *overrides: str) -> list[str]:
    """Small and quick: model=tiny narrowed to hidden 16, a tiny batch, no logger."""
    return [
        *overrides,
        "model.hidden_size=16",
        "data=text",
        f"data.train_files=[{corpus['file']}]",
        "data.val_fraction=0.1",
        f"data.cache_dir={corpus['cache']}",
        "logger=none",
        "trainer.device=cpu",
        "trainer.batch_size=2",
        "trainer.seq_len=32",
        "trainer.max_steps=1",
        "trainer.eval_every=1",
        "trainer.eval_batches=1",
        "trainer.checkpoint_every=1",
        "trainer.progress=false",
    ]


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("study", STUDIES)
def test_every_experiment_runs_one_step(study, small_corpus, tmp_path):
    cfg = compose_run(*one_step(small_corpus, f"experiment={study}"))
    assert cfg.name == study and cfg.model.hidden_size == 16
    summary = train_run(cfg, tmp_path / "run")
    assert summary["steps"] == 1 and math.isfinite(summary["best_val_bpb"])
    assert [r["split"] for r in read_records(tmp_path / "run")] == ["train", "val"]
    shutil.rmtree(tmp_path / "run")  # two checkpoints of ~80 MB: not for pytest to keep


@pytest.mark.parametrize("name", DEBUG)
def test_every_debug_config_runs_one_step(name, small_corpus, tmp_path):
    overrides = one_step(small_corpus, f"debug={name}")
    assert "/debug/runs/" in str(compose_run(*overrides, hydra_config=True).hydra.run.dir)
    cfg = compose_run(*overrides)
    assert not cfg.logger  # logger=none: debug runs never reach W&B
    summary = train_run(cfg, tmp_path / "run")
    assert summary["steps"] == 1
    if name == "profiler":
        trace = json.loads((tmp_path / "run" / "profile" / "trace.json").read_text())
        assert any("aten::" in event.get("name", "") for event in trace["traceEvents"])
        assert "Self CPU" in (tmp_path / "run" / "profile" / "operators.txt").read_text()
    shutil.rmtree(tmp_path / "run")


def test_the_debug_configs_set_what_their_names_promise():
    smoke = compose_run("debug=smoke")
    assert (smoke.trainer.max_steps, smoke.trainer.eval_every, smoke.trainer.checkpoint_every) == (
        1,
        1,
        1,
    )
    assert compose_run("debug=overfit").trainer.overfit_batches == 1
    profiler = compose_run("debug=profiler").trainer
    assert profiler.profile_steps == profiler.max_steps > 1


class CountingLoader:
    """A stand-in loader: batch i is the tensor [i]."""

    def __init__(self):
        self.position = 0

    def next_batch(self):
        self.position += 1
        return torch.tensor([self.position - 1]), torch.tensor([self.position])

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_overfitting_repeats_the_first_batches_and_resumes_on_them():
    repeated = RepeatedBatches(CountingLoader(), 2)
    seen = [int(repeated.next_batch()[0]) for _ in range(5)]
    assert seen == [0, 1, 0, 1, 0]
    resumed = RepeatedBatches(CountingLoader(), 2)
    resumed.load_state_dict(repeated.state_dict())
    assert [int(resumed.next_batch()[0]) for _ in range(3)] == [1, 0, 1]
    with pytest.raises(ValueError, match="overfit_batches=3"):
        RepeatedBatches(CountingLoader(), 3).load_state_dict(repeated.state_dict())


@pytest.mark.slow
def test_overfitting_one_batch_drives_its_loss_down(small_corpus, tmp_path):
    cfg = compose_run(
        *one_step(small_corpus, "debug=overfit"),
        "trainer.max_steps=30",
        "trainer.log_every=1",
        "trainer.eval_every=30",
        "trainer.checkpoint_every=30",
        "optimizer.lr=3e-2",
    )
    train_run(cfg, tmp_path / "run")
    losses = [r["loss"] for r in read_records(tmp_path / "run") if r["split"] == "train"]
    # the same 64 tokens, learnt by heart: 12.2 -> 3.4 here (fresh batches: 12.2 -> 7.6)
    assert losses[-1] < 0.4 * losses[0]
    shutil.rmtree(tmp_path / "run")


# --------------------------------------------------------------------------------- Optuna
@pytest.mark.slow
def test_an_optuna_sweep_of_two_trials_returns_the_best_validation_bits_per_byte(
    small_corpus, tmp_path
):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    overrides = one_step(small_corpus, "hparams_search=optuna", "model=tiny")
    overrides = [o for o in overrides if not o.startswith("trainer.max_steps")]
    command = [
        sys.executable,
        "-m",
        "gpt_oss.train",
        *overrides,
        "trainer.max_steps=2",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
    ]
    env = os.environ | {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    values = [min(r["bpb"] for r in read_records(p) if r["split"] == "val") for p in trials]
    lrs = [yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text()) for p in trials]
    assert all(any(o.startswith("optimizer.lr=") for o in trial) for trial in lrs)
    assert best["best_value"] == pytest.approx(min(values))
    assert 1e-4 <= best["best_params"]["optimizer.lr"] <= 1e-2
    shutil.rmtree(sweep)
