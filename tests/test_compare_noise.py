"""compare over seeds: per-setting means and 95% intervals, Welch's test, Holm's marks.

Expected values are computed here from the textbook formulas (Welch-Satterthwaite degrees of
freedom, Holm's step-down), independently of gpt_oss.compare's use of scipy.stats.ttest_ind."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from gpt_oss.compare import main as compare_main
from gpt_oss.studies import compare

# final validation bits per byte of each (setting, seed); best = final - 0.01
FINAL_BPB = {
    "4": [1.20, 1.22, 1.21],  # clearly worse than 16 (spread 0.01)
    "16": [1.10, 1.11, 1.09],
    "32": [1.18, 1.03, 1.13],  # wide spread: overlaps both
}


def write_run(path: Path, experts: str, seed: int, final_bpb: float) -> None:
    (path / ".hydra").mkdir(parents=True)
    overrides = ["model=tiny", f"model.num_experts={experts}", f"trainer.seed={seed}"]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text(yaml.safe_dump({"parameters": {"total": 10, "active": 5}}))
    records = [
        {"step": 10, "split": "train", "loss": 3.0, "tokens_per_s": 50.0, "tokens": 100},
        {"step": 10, "split": "val", "loss": 3.0, "bpb": final_bpb - 0.01},
        {"step": 20, "split": "val", "loss": 3.5, "bpb": final_bpb},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def seeded_sweep(tmp_path) -> Path:
    job = 0
    for experts, values in FINAL_BPB.items():
        for seed, value in enumerate(values, start=1):
            write_run(tmp_path / str(job), experts, seed, value)
            job += 1
    return tmp_path


def interval(values: list[float]) -> tuple[float, float, float]:
    x = np.array(values)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    a, b = np.array(a), np.array(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, 2 * stats.t.sf(abs(t), df)


def test_settings_group_the_seeds_with_mean_and_student_t_interval(seeded_sweep):
    rows, swept = compare.compare_rows(compare.load_runs([seeded_sweep]))
    assert swept == ["model.num_experts", "trainer.seed"]
    settings, _ = compare.seed_noise_tables(rows, swept)
    assert [s["setting"] for s in settings] == [f"model.num_experts={e}" for e in FINAL_BPB]
    for setting, values in zip(settings, FINAL_BPB.values(), strict=True):
        assert setting["seeds"] == 3
        mean, low, high = interval(values)
        got = tuple(setting[f"final_val_bpb_{p}"] for p in ("mean", "low", "high"))
        assert got == pytest.approx((mean, low, high), rel=1e-12)
        best = interval([v - 0.01 for v in values])
        got = tuple(setting[f"best_val_bpb_{p}"] for p in ("mean", "low", "high"))
        assert got == pytest.approx(best, rel=1e-12)


def test_pairs_are_marked_beyond_noise_by_welch_with_holm(seeded_sweep):
    rows, swept = compare.compare_rows(compare.load_runs([seeded_sweep]))
    _, pairs = compare.seed_noise_tables(rows, swept)
    names = list(FINAL_BPB)
    expected = [
        (a, b, *welch(FINAL_BPB[a], FINAL_BPB[b]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    raw = [p for *_, p in expected]
    # Holm by hand: sort ascending, multiply by (m - rank), keep the running maximum
    order = np.argsort(raw)
    holm = [0.0] * 3
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        holm[i] = running
    assert len(pairs) == 3
    for pair, (a, b, t, df, p), adjusted in zip(pairs, expected, holm, strict=True):
        assert (pair["a"], pair["b"]) == (f"model.num_experts={a}", f"model.num_experts={b}")
        assert pair["difference"] == pytest.approx(np.mean(FINAL_BPB[a]) - np.mean(FINAL_BPB[b]))
        assert (pair["t"], pair["df"], pair["p"]) == pytest.approx((t, df, p), rel=1e-9)
        assert pair["p_holm"] == pytest.approx(adjusted, rel=1e-9)
        assert pair["beyond_noise"] == (adjusted < 0.05)
    marks = {(p["a"][-2:].strip("="), p["b"][-2:].strip("=")): p["beyond_noise"] for p in pairs}
    assert marks == {("4", "16"): True, ("4", "32"): False, ("16", "32"): False}


def test_one_seed_per_setting_gives_no_interval_and_no_mark():
    rows = [
        {"model.num_experts": "4", "final_val_bpb": 1.2, "best_val_bpb": 1.1},
        {"model.num_experts": "8", "final_val_bpb": 1.0, "best_val_bpb": 0.9},
    ]
    settings, pairs = compare.seed_noise_tables(rows, ["model.num_experts"])
    assert settings[0]["final_val_bpb_mean"] == 1.2
    assert math.isnan(settings[0]["final_val_bpb_low"]) and math.isnan(pairs[0]["p"])
    assert pairs[0]["beyond_noise"] is False


def test_compare_command_prints_intervals_marks_and_writes_their_csvs(seeded_sweep, capsys):
    assert compare_main([str(seeded_sweep)]) == 0
    printed = capsys.readouterr().out
    mean, low, high = interval(FINAL_BPB["4"])
    assert "| model.num_experts=4 | 3 | " in printed
    assert f"{mean:.4f} [{low:.4f}, {high:.4f}]" in printed
    assert "| model.num_experts=4 | model.num_experts=16 |" in printed and "**yes**" in printed
    pairs = list(csv.DictReader((seeded_sweep / "pairs.csv").open()))
    assert [p["beyond_noise"] for p in pairs] == ["True", "False", "False"]
    settings = list(csv.DictReader((seeded_sweep / "settings.csv").open()))
    assert [int(s["seeds"]) for s in settings] == [3, 3, 3]
    assert (seeded_sweep / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interval_plot_draws_error_bars_at_the_setting_means(seeded_sweep):
    import matplotlib.pyplot as plt

    rows, swept = compare.compare_rows(compare.load_runs([seeded_sweep]))
    settings, _ = compare.seed_noise_tables(rows, swept)
    fig, ax = plt.subplots()
    compare._plot_final(
        ax, settings, ["model.num_experts"], "model.num_experts", "final_val_bpb", interval=True
    )
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [4, 16, 32]
    means = [np.mean(FINAL_BPB[e]) for e in ("4", "16", "32")]
    assert list(line.get_ydata()) == pytest.approx(means)
    assert len(ax.containers) == 1  # one errorbar container holding the three bars
    plt.close("all")


def test_the_seeds_of_one_setting_share_a_wandb_group_inside_the_sweeps():
    import re

    from gpt_oss.train import seed_group

    groups = {seed_group("gpt-oss-1", ["model.num_experts=8", f"trainer.seed={s}"]) for s in (1, 2)}
    assert groups == {"gpt-oss-1/model.num_experts=8"}
    assert seed_group("gpt-oss-1", ["model.num_experts=16", "trainer.seed=1"]) not in groups
    assert seed_group("gpt-oss-1", ["model.num_experts=8"]) == "gpt-oss-1"  # no seed: the sweep's

    class Api:
        def runs(self, path, filters):
            self.pattern = filters["group"]["$regex"]
            return []

    api = Api()
    with pytest.raises(LookupError):
        compare.load_wandb_runs("gpt-oss-1", "p", api=api)
    matches = [
        g
        for g in ("gpt-oss-1", "gpt-oss-1/model.num_experts=8", "gpt-oss-10", "gpt-oss-1x")
        if re.search(api.pattern, g)
    ]
    assert matches == ["gpt-oss-1", "gpt-oss-1/model.num_experts=8"]
