"""Loggers: several at once, each read back with its own reader (TensorBoard's EventAccumulator,
the CSV module, W&B's `wandb leet inspect`) against metrics.jsonl; W&B's mode resolution."""

from __future__ import annotations

import json
import logging
import math
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_train import compose_run, read_records, tiny_overrides

from gpt_oss.model.config import ConfigError
from gpt_oss.train import make_loggers, run
from gpt_oss.training import wandb_logger
from gpt_oss.training.checkpoint import read_checkpoint
from gpt_oss.training.file_loggers import CSVLogger, TensorBoardLogger, read_csv_metrics
from gpt_oss.training.tracking import LoggerGroup, NullLogger, short_run_name
from gpt_oss.training.wandb_logger import WandbLogger, checkpoints_to_prune, resolve_mode

ROOT = Path(__file__).resolve().parents[1]
WANDB = Path(sys.executable).with_name("wandb")


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path, monkeypatch):
    """W&B's settings, cache and staging (checkpoint copies) inside the test's folder; no key,
    no mode from the machine running the tests."""
    for name in (
        "WANDB_API_KEY",
        "WANDB_MODE",
        "WANDB_BASE_URL",
        "WANDB_DISABLED",
        "HTTPS_PROXY",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc login of the machine's user


def closed_port_url() -> str:
    """An http URL on this machine where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def leet(path: Path, *args: str) -> str:
    """`wandb leet inspect` (W&B's own reader of .wandb transaction logs) on an offline run."""
    done = subprocess.run(
        [str(WANDB), "leet", "inspect", *args, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wandb_records(offline_run: Path) -> list[dict]:
    return [json.loads(line) for line in leet(offline_run, "--json").splitlines() if line.strip()]


def only_offline_run(run_dir: Path) -> Path:
    runs = list((run_dir / "wandb").glob("*run-*"))
    assert [r.name.startswith("offline-run-") for r in runs] == [True], runs  # no online attempt
    return runs[0]


# ---------------------------------------------------------------- composition
def test_logger_group_selects_several_loggers_by_name():
    group = make_loggers(
        compose_run("logger=[wandb,tensorboard,csv]", "logger.wandb.mode=offline").logger
    )
    assert isinstance(group, LoggerGroup)
    assert {k: type(v) for k, v in group.loggers.items()} == {
        "wandb": WandbLogger,
        "tensorboard": TensorBoardLogger,
        "csv": CSVLogger,
    }
    assert group.loggers["wandb"].mode == "offline"
    assert make_loggers(compose_run("logger=none").logger).loggers == {}


def test_a_logger_option_outside_its_logger_fails_naming_it():
    with pytest.raises(
        ConfigError, match=r"logger\.mode='offline' is not a logger.*logger\.wandb\.mode"
    ):
        make_loggers(compose_run("+logger.mode=offline").logger)
    with pytest.raises(
        ConfigError,
        match=r"logger\.wandb\.mode='sometimes' is invalid: valid are \('auto', 'online'",
    ):
        make_loggers(compose_run("logger.wandb.mode=sometimes").logger)


def test_group_keeps_every_logger_going_after_a_failure(tmp_path, caplog):
    class Flaky(NullLogger):
        calls = 0

        def log(self, metrics, step):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise OSError("disk hiccup")

    csv_logger = CSVLogger()
    group = LoggerGroup({"flaky": Flaky(), "csv": csv_logger})
    group.start(tmp_path, {})
    with caplog.at_level(logging.WARNING):
        group.log({"train/loss": 2.0}, step=1)
        group.log({"train/loss": 1.5}, step=2)
    assert Flaky.calls == 2  # tried again after its failure
    assert [r["train/loss"] for r in read_csv_metrics(tmp_path / "metrics.csv")] == [2.0, 1.5]
    assert "logger flaky: log failed (OSError: disk hiccup)" in caplog.text


# ---------------------------------------------------------------- run names
def test_short_run_names_use_the_last_key_part_and_stay_short():
    assert short_run_name(["model.num_experts=8", "+trainer.seed=2"]) == "num_experts=8,seed=2"
    assert short_run_name(["optimizer.lr=1e-3", "model.lr=2"]) == "optimizer.lr=1e-3,model.lr=2"
    swept = {"model.num_experts"}
    assert (
        short_run_name(["model=tiny", "model.num_experts=8", "trainer.max_steps=9"], swept)
        == "num_experts=8"
    )
    many = [f"model.field{i}=value{i}" for i in range(30)]
    name = short_run_name(many, max_chars=64)
    assert len(name) <= 64 and name.startswith("field0=value0,") and name.endswith("more")
    assert short_run_name([], None) is None and short_run_name(["a=1"], {"b"}) is None


@pytest.mark.slow
def test_sweep_jobs_are_named_by_their_swept_keys_in_one_wandb_group(tmp_path):
    sweep_dir = tmp_path / "sweep"
    overrides = [
        a
        for a in tiny_overrides(
            tmp_path, "trainer.max_steps=1", "trainer.eval_every=1", "trainer.checkpoint_every=1"
        )
        if a != "logger=none"
    ]
    command = [
        sys.executable,
        "-m",
        "gpt_oss.train",
        "-m",
        *overrides,
        "logger=wandb",
        "logger.wandb.mode=offline",
        "model.num_experts=2,4",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {}
    for job in ("0", "1"):
        summary = json.loads(leet(only_offline_run(sweep_dir / job), "--summary", "--json"))
        run_record = next(
            r for r in wandb_records(only_offline_run(sweep_dir / job)) if r["type"] == "run"
        )
        runs[summary["name"]] = run_record["run"]
    assert set(runs) == {"num_experts=2", "num_experts=4"}
    groups = {r["run_group"] for r in runs.values()}
    assert len(groups) == 1 and groups.pop().startswith("gpt-oss-")
    assert {r["job_type"] for r in runs.values()} == {"train"}


# ---------------------------------------------------------------- TensorBoard and CSV
@pytest.mark.slow
def test_tensorboard_and_csv_hold_the_metrics_of_metrics_jsonl_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    loggers = ["logger=[tensorboard,csv]", "trainer.max_steps=4"]
    run(compose_run(*tiny_overrides(tmp_path, *loggers)), run_dir)
    resumed = ["logger=[tensorboard,csv]", "trainer.max_steps=8", "trainer.resume=auto"]
    run(compose_run(*tiny_overrides(tmp_path, *resumed)), run_dir)
    records = read_records(run_dir)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 4, 6, 8] and [r["step"] for r in val] == [4, 8]

    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    events.Reload()
    for split, rows, keys in (
        ("train", train, ("loss", "lr", "grad_norm", "tokens")),
        ("val", val, ("loss", "bpb")),
    ):
        for key in keys:
            scalars = events.Scalars(f"{split}/{key}")
            assert [s.step for s in scalars] == [r["step"] for r in rows], (split, key)
            assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert [h.step for h in events.Images("expert_load")] == [4, 8]  # a heatmap per evaluation
    assert [h.step for h in events.Images("loss_curve")] == [4, 8]

    csv_rows = read_csv_metrics(run_dir / "metrics.csv")
    csv_train = [r for r in csv_rows if "train/loss" in r]
    csv_val = [r for r in csv_rows if "val/loss" in r]
    assert [r["step"] for r in csv_train] == [r["step"] for r in train]
    for row, record in zip(csv_train, train, strict=True):
        assert {k: row[f"train/{k}"] for k in ("loss", "lr", "tokens")} == {
            k: record[k] for k in ("loss", "lr", "tokens")
        }
    assert [(r["step"], r["val/bpb"]) for r in csv_val] == [(r["step"], r["bpb"]) for r in val]

    load = read_csv_metrics(run_dir / "expert_load.csv")
    layers = 1 + max(int(r["layer"]) for r in load)
    experts = 1 + max(int(r["expert"]) for r in load)
    assert len(load) == 2 * layers * experts  # one table per evaluation, resumed rows not doubled
    for step in (4, 8):
        for layer in range(layers):
            shares = [r["load"] for r in load if r["step"] == step and r["layer"] == layer]
            assert sum(shares) == pytest.approx(1.0)


def test_a_resumed_run_replaces_what_its_first_run_logged_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for make in (TensorBoardLogger, CSVLogger):
        first = make()
        first.start(tmp_path, {})
        for step in range(1, 7):  # killed after step 6; its checkpoint was written at step 4
            first.log({"train/loss": float(step)}, step=step)
        first.finish()
        resumed = make()
        resumed.start(tmp_path, {}, step=4)
        resumed.log({"train/loss": 60.0}, step=6)
        resumed.finish()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (6, 60.0)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("train/loss")] == expected
    assert [
        (r["step"], r["train/loss"]) for r in read_csv_metrics(tmp_path / "metrics.csv")
    ] == expected


def test_a_run_that_fails_still_closes_its_loggers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gpt_oss.training.trainer import TrainingDiverged

    # flush_secs: TensorBoard would not write on its own during the test; only closing flushes
    cfg = compose_run(
        *tiny_overrides(
            tmp_path,
            "logger=[tensorboard,wandb]",
            "logger.wandb.mode=offline",
            "logger.tensorboard.flush_secs=3600",
            "optimizer.lr=1e30",
            "trainer.grad_clip=0",
            "trainer.log_every=1",
        )
    )
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        run(cfg, run_dir)
    logged = [r["step"] for r in read_records(run_dir) if r["split"] == "train"]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert logged and [s.step for s in events.Scalars("train/loss")] == logged
    summary = json.loads(leet(only_offline_run(run_dir), "--summary", "--json"))
    assert summary["state"] == "failed" and summary["exit_code"] == 1


# ---------------------------------------------------------------- W&B
@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_and_config(tmp_path):
    cfg = compose_run(
        *tiny_overrides(
            tmp_path,
            "logger=wandb",
            "logger.wandb.mode=offline",
            "logger.wandb.log_checkpoints=true",
            "trainer.max_steps=4",
            "trainer.eval_every=2",
        )
    )
    run_dir = tmp_path / "run"
    run(cfg, run_dir)  # returns after W&B has written the run: read back at once, no waiting
    offline = only_offline_run(run_dir)
    records = read_records(run_dir)
    summary = json.loads(leet(offline, "--summary", "--json"))
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["config"]["model.hidden_size"] == cfg.model.hidden_size
    assert summary["config"]["provenance.git_commit"] and isinstance(
        summary["config"]["provenance.git_dirty"], bool
    )
    val = [r for r in records if r["split"] == "val"]
    assert summary["summary"]["val/loss"] == pytest.approx(
        {"min": min(r["loss"] for r in val), "last": val[-1]["loss"]}
    )
    assert summary["summary"]["val/bpb"]["last"] == pytest.approx(val[-1]["bpb"])
    assert summary["summary"]["best_val_loss"] == pytest.approx(min(r["loss"] for r in val))
    table = summary["summary"]["expert_load/table"]
    assert table["_type"] == "table-file" and table["nrows"] == cfg.model.num_hidden_layers
    assert table["ncols"] == 1 + cfg.model.num_experts

    logged = wandb_records(offline)
    history = [r["history"]["item"] for r in logged if r["type"] == "history"]
    train_logged = {h["_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert train_logged == pytest.approx(
        {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    )
    assert not any(k.startswith("expert_load/layer") for h in history for k in h)  # no 768 scalars
    run_record = next(r["run"] for r in logged if r["type"] == "run")
    assert run_record["job_type"] == "train"
    versions = [
        r["artifact"]
        for r in logged
        if r["type"] == "artifact" and r["artifact"]["type"] == "model"
    ]
    final = [v for v in versions if "step-4" in v["aliases"]]
    assert len(final) == 1 and {"best", "last"} <= set(final[0]["aliases"])  # one version, one copy
    assert [f["path"] for f in final[0]["manifest"]["contents"]] == ["model.pt"]
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["wandb_run_id"] == summary["run_id"]


@pytest.mark.parametrize(
    "wandb_mode, why", [(None, "unreachable"), ("offline", "WANDB_MODE=offline")]
)
def test_wandb_with_a_key_and_no_network_keeps_an_offline_record(
    tmp_path, monkeypatch, wandb_mode, why
):
    monkeypatch.setenv("WANDB_API_KEY", "fake")
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())  # no network, deterministically
    if wandb_mode:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    logger = WandbLogger(mode="auto", init_timeout=300)
    logger.start(tmp_path, {"model": {"hidden_size": 8}})
    logger.log({"train/loss": 2.5}, step=1)
    logger.finish()
    assert logger.resolved[0] == "offline" and why in logger.resolved[1]  # decided before init
    assert logger.start_seconds < logger.init_timeout  # never waited for the server
    offline = only_offline_run(tmp_path)
    history = [r["history"]["item"] for r in wandb_records(offline) if r["type"] == "history"]
    assert [h["train/loss"] for h in history] == [2.5]


@pytest.mark.parametrize(
    "env, mode, expected",
    [
        (
            {"WANDB_MODE": "offline", "WANDB_API_KEY": "fake"},
            "auto",
            ("offline", "WANDB_MODE=offline"),
        ),
        ({"WANDB_MODE": "disabled"}, "auto", ("disabled", "WANDB_MODE=disabled")),
        ({"WANDB_MODE": "online"}, "offline", ("offline", "logger.wandb.mode=offline")),
        ({"WANDB_API_KEY": "fake"}, "offline", ("offline", "logger.wandb.mode=offline")),
        ({}, "auto", ("offline", "no W&B API key (wandb login or WANDB_API_KEY)")),
    ],
)
def test_wandb_mode_honours_config_then_environment_without_probing(
    monkeypatch, env, mode, expected
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def no_network(*args):
        raise AssertionError("the network was probed although the mode was given")

    monkeypatch.setattr(wandb_logger, "server_reachable", no_network)
    assert resolve_mode(mode) == expected


def test_wandb_mode_errors_name_the_value_and_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match=r"logger.wandb.mode='sometimes' is invalid: valid are"):
        resolve_mode("sometimes")
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(
        ValueError, match=r"WANDB_MODE='ofline' is invalid: valid are \('online', 'offline'"
    ):
        resolve_mode("auto")


def test_server_reachable_answers_for_a_listening_and_a_closed_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert wandb_logger.server_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", 10)
    assert not wandb_logger.server_reachable(closed_port_url(), 10)


def test_wandb_log_failure_does_not_lose_the_rest_of_the_run(tmp_path, monkeypatch):
    logger = WandbLogger(mode="offline")
    logger.start(tmp_path, {})
    real_log, calls = logger.run.log, []

    def flaky_log(metrics, step=None):
        calls.append(step)
        if len(calls) == 1:
            raise TimeoutError("service busy")
        real_log(metrics, step=step)

    monkeypatch.setattr(logger.run, "log", flaky_log)
    for step in (1, 2, 3):
        logger.log({"train/loss": 1.0 / step}, step=step)
    logger.finish()
    history = [
        r["history"]["item"]
        for r in wandb_records(only_offline_run(tmp_path))
        if r["type"] == "history"
    ]
    assert [h["_step"] for h in history] == [2, 3]


def test_checkpoint_retention_keeps_the_newest_and_the_best():
    logged = [("best", 100), ("last", 200), ("best", 300), ("last", 400), ("last", 500)]
    assert checkpoints_to_prune(logged, keep=2) == [0, 1]
    assert checkpoints_to_prune(logged, keep=1) == [0, 1, 3]
    assert checkpoints_to_prune(logged[:2], keep=2) == []


def test_expert_load_heatmap_has_one_cell_per_layer_and_expert():
    from gpt_oss.studies.plots import expert_load_figure

    fig = expert_load_figure([[0.5, 0.25, 0.25, 0.0], [0.25] * 4, [0.1, 0.2, 0.3, 0.4]])
    assert fig.axes[0].images[0].get_array().shape == (3, 4)
    assert not math.isnan(fig.axes[0].images[0].get_array().sum())


def test_swept_keys_come_from_the_command_line_and_the_sweeper(tmp_path):
    from omegaconf import OmegaConf

    from gpt_oss.train import swept_keys

    OmegaConf.save(
        {
            "hydra": {
                "overrides": {
                    "task": ["model.num_experts=2,4", "trainer=cpu", "+trainer.seed=range(1,3)"]
                }
            }
        },
        tmp_path / "multirun.yaml",
    )
    hc = SimpleNamespace(
        sweeper=OmegaConf.create({"params": {"model.sliding_window": "8,16"}}),
        sweep=SimpleNamespace(dir=str(tmp_path)),
    )
    assert swept_keys(hc) == {"model.num_experts", "trainer.seed", "model.sliding_window"}
