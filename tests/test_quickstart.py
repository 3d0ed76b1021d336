"""The README's CPU run (issue 13): its command as written, with the step budget cut to
seconds; evaluate and training validation give the same bits per byte where their windows are
the same; CPU threads, the cost preview and the first-step heartbeat."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import shlex
import threading
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gpt_oss.evaluate import run as evaluate
from gpt_oss.generate import run as generate
from gpt_oss.model.config import ConfigError
from gpt_oss.model.tokenizer import get_tokenizer
from gpt_oss.train import run as train
from gpt_oss.training import cpu_preview

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IN_README = "../shared/data/tinystories_sample.jsonl"
# Only the step budget and the sizes of evaluation change; the rest is the README's command.
SECONDS_BUDGET = [
    "trainer.max_steps=3", "trainer.eval_every=3", "trainer.checkpoint_every=3",
    "trainer.eval_batches=1", "trainer.log_every=1", "trainer.progress=false",
]  # fmt: skip


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(name, overrides=list(overrides))


def readme_train_commands() -> list[list[str]]:
    """The `python -m gpt_oss.train` lines of the README's CPU section, split as a shell would."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### A CPU run that writes stories") :]
    section = section[: section.index("\n## ")]
    lines = re.findall(r"^python -m gpt_oss\.train .*$", section, flags=re.MULTILINE)
    return [shlex.split(line)[3:] for line in lines]


def test_the_readme_gives_one_cpu_command_for_the_hub_and_the_same_for_local_files():
    hub, local = readme_train_commands()
    assert local[: len(hub)] == hub  # the same run, plus where the text comes from
    assert f"data.train_files=[{SAMPLE_IN_README}]" in local and "data=text" in local


@pytest.mark.usefixtures("single_threaded")
def test_the_readme_cpu_command_trains_on_real_stories_with_the_budget_cut_to_seconds(
    tinystories_sample, tmp_path
):
    _, local = readme_train_commands()
    overrides = [o.replace(SAMPLE_IN_README, str(tinystories_sample)) for o in local]
    cfg = compose_config("config", *overrides, f"data.cache_dir={tmp_path / 'cache'}",
                         *SECONDS_BUDGET)  # fmt: skip
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 3 and math.isfinite(summary["final_val_bpb"])
    assert 0 < summary["eval_seconds"] < summary["seconds"]
    recorded = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert recorded.model.hidden_size == 192 and recorded.model.num_hidden_layers == 4
    assert recorded.data.vocabulary == "compact" and recorded.model.vocab_size == 8192
    assert recorded.trainer.precision == "bf16" and recorded.optimizer.lr == 2e-3
    assert recorded.model.tie_embeddings and recorded.optimizer.weight_decay == 0.5
    assert recorded.optimizer.decay_embeddings and recorded.data.max_train_documents == 50000
    assert recorded.data_prepared.train_documents == 3919  # 97% of the 4,040 real stories
    out = io.StringIO()
    cfg = compose_config("generate", f"checkpoint={tmp_path / 'run'}", "max_new_tokens=8",
                         "temperature=0", "threads=1")  # fmt: skip
    (result,) = generate(cfg, out, io.StringIO())
    assert out.getvalue().startswith("Once upon a time") and len(result.tokens[0]) >= 1


def prefix_of_tokens(text: str, count: int) -> str | None:
    """The longest word-boundary prefix of `text` that is exactly `count` o200k tokens, if any
    (at word boundaries the prefix tokenizes as the start of the whole text does)."""
    tokenizer, words = get_tokenizer(), text.split(" ")
    for end in range(1, len(words) + 1):
        prefix = " ".join(words[:end])
        length = len(tokenizer.encode_ordinary(prefix))
        if length == count:
            return prefix
        if length > count:
            return None
    return None


@pytest.fixture(scope="module")
def same_windows(tinystories_sample, tmp_path_factory) -> dict:
    """Training stories, and a held-out document X of exactly seq_len - 1 tokens. The validation
    split [X, X] is the stream <eot> X <eot> X: its one window of seq_len + 1 tokens is the
    window evaluate scores for X alone (<eot> X, predicting X and the closing <eot>), and its
    bytes per token are X's."""
    seq_len = 32
    stories = [json.loads(line)["text"] for line in tinystories_sample.open()][:300]
    document = next(p for s in stories[:200] if (p := prefix_of_tokens(s, seq_len - 1)))
    folder = tmp_path_factory.mktemp("same_windows")
    files = {name: folder / f"{name}.jsonl" for name in ("train", "val", "x")}
    for name, texts in (("train", stories[:200]), ("val", [document] * 2), ("x", [document])):
        files[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"files": files, "seq_len": seq_len, "cache": folder / "cache"}


@pytest.mark.usefixtures("single_threaded")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_equals_training_validation_where_the_windows_are_the_same(
    same_windows, precision, tmp_path
):
    """bf16: evaluate on a CPU runs as training validates (float32 weights, autocast); casting
    the weights to bf16, as it did before, moves the result off training's."""
    files, seq_len = same_windows["files"], same_windows["seq_len"]
    cfg = compose_config(
        "config", "model=tiny", "data=text", "logger=none", "trainer=cpu",
        f"data.train_files=[{files['train']}]", f"data.val_files=[{files['val']}]",
        f"data.cache_dir={same_windows['cache']}", "data.num_proc=1", "data.vocab_size=null",
        f"trainer.precision={precision}", f"trainer.seq_len={seq_len}", "trainer.batch_size=4",
        "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
        "trainer.eval_batches=10", "trainer.progress=false", "optimizer.lr=3e-3",
    )  # fmt: skip
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    validation = [r for r in records if r["split"] == "val"][-1]
    cfg = compose_config(
        "evaluate", f"checkpoint={tmp_path / 'run'}", f"text_file={files['x']}",
        f"context_length={seq_len}", f"stride={seq_len}", f"dtype={precision}", "progress=false",
    )  # fmt: skip
    with redirect_stdout(io.StringIO()):
        score = evaluate(cfg)
    assert score.tokens == seq_len  # X's tokens and its closing <eot>: one window
    assert score.loss == pytest.approx(validation["loss"], rel=1e-5)
    assert score.bits_per_byte == pytest.approx(validation["bpb"], rel=1e-5)


def test_trainer_threads_applies_and_a_negative_count_is_refused_before_any_work(tmp_path):
    before = torch.get_num_threads()
    try:
        cfg = compose_config(
            "config", "model=tiny", "data=synthetic", "logger=none", "trainer=cpu",
            "data.synthetic_train_stories=200", "data.synthetic_val_stories=20",
            f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=1", "trainer.batch_size=2",
            "trainer.seq_len=32", "trainer.eval_batches=1", "trainer.progress=false",
            "trainer.threads=1",
        )  # fmt: skip
        torch.set_num_threads(2)
        train(cfg, tmp_path / "run")
        assert torch.get_num_threads() == 1
        cfg.trainer.threads = -1
        with pytest.raises(ConfigError, match=r"trainer.threads=-1 is invalid"):
            train(cfg, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    finally:
        torch.set_num_threads(before)


def test_generate_and_evaluate_refuse_a_negative_thread_count(tmp_path):
    (tmp_path / "x.txt").write_text("Once upon a time.")
    common = [f"checkpoint={tmp_path / 'none'}", "threads=-2", "device=cpu"]
    with pytest.raises(ConfigError, match=r"threads=-2 is invalid"):
        generate(compose_config("generate", *common), io.StringIO(), io.StringIO())
    with pytest.raises(ConfigError, match=r"threads=-2 is invalid"):
        evaluate(compose_config("evaluate", *common, f"text_file={tmp_path / 'x.txt'}"))


def test_a_cpu_run_logs_its_step_time_total_and_memory_before_step_one(tmp_path, caplog):
    cfg = compose_config(
        "config", "model=tiny", "data=synthetic", "logger=none", "trainer=cpu",
        "data.synthetic_train_stories=200", "data.synthetic_val_stories=20",
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=2", "trainer.batch_size=2",
        "trainer.seq_len=32", "trainer.eval_batches=1", "trainer.progress=false",
        "trainer.threads=1",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="gpt_oss"):
        train(cfg, tmp_path / "run")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CPU run")]
    assert re.search(r"CPU run \(1 thread\): about [\d.e+-]+ s per step, 2 steps ~ \d+ s, "
                     r"peak memory ~ [\d.]+ GiB \(estimated\)$", line), line  # fmt: skip


def test_a_slow_step_is_a_warning_that_names_the_cpu_command():
    slow = cpu_preview.CpuPreview(step_s=188.0, peak_bytes=9.9 * 2**30, steps=2000)
    assert slow.slow and "model=small trainer=cpu" in slow.message(2)
    assert "2000 steps ~ 104.4 h" in slow.message(2) and "9.9 GiB" in slow.message(2)
    assert not cpu_preview.CpuPreview(2.2, 2**30, 1200).slow


def test_the_heartbeat_reports_while_the_first_step_runs_and_stops_after():
    reported = threading.Event()
    reports: list[float] = []

    def report(seconds: float) -> None:
        reports.append(seconds)
        reported.set()

    with cpu_preview.Heartbeat(report, interval=0.01) as heartbeat:
        assert reported.wait(timeout=60)  # a "step" that ends only once a report came
    assert reports and all(s >= 0 for s in reports)
    assert not heartbeat._thread.is_alive()  # joined: nothing reports after the step


def test_the_heartbeat_writes_on_the_progress_bar_or_the_log(caplog):
    class Bar:
        disable, text = False, None

        def set_postfix_str(self, text, refresh=True):
            self.text = text

    bar = Bar()
    cpu_preview.first_step_report(bar, 188.0)(42.4)
    assert bar.text == "step 1 running: 42 s of ~188 s estimated"
    with caplog.at_level(logging.INFO, logger="gpt_oss"):
        cpu_preview.first_step_report(None, None)(3.0)
    assert "step 1 running: 3 s" in caplog.text
