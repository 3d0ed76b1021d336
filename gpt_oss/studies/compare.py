"""Compare runs side by side: a table (markdown on the terminal, CSV on disk) and one PNG.
`python -m gpt_oss.compare` is the command.

Local runs are read from their directories (config.yaml, metrics.jsonl, .hydra/overrides.yaml),
with no network. The swept settings are the overrides whose values differ between the runs.

Runs that differ only in `trainer.seed` are repeats of one setting (sweep them with
`trainer.seed=1,2,3`): the comparison then also gives, per setting, the mean and a 95%
Student-t interval over the seeds, and marks the pairs of settings whose difference is beyond
their seed noise by Welch's t-test with Holm's correction (see `seed_noise_tables`).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from gpt_oss.studies.plots import plt, save_figure, series
from gpt_oss.training.tracking import read_metrics

# The CSV and table columns after the run name and its swept overrides, with their headers.
HEADERS = {
    "params_total": "total params",
    "params_active": "active params",
    "best_val_loss": "best val loss",
    "final_val_loss": "final val loss",
    "best_val_bpb": "best val bpb",
    "final_val_bpb": "final val bpb",
    "tokens_per_s": "tokens/s",
    "steps": "steps",
    "tokens": "tokens",
}
COLUMNS = tuple(HEADERS)
SEED_KEY = "trainer.seed"  # runs that differ only here are repeats of one setting
CONFIDENCE = 0.95  # of the per-setting intervals
ALPHA = 0.05  # family-wise error rate of the beyond-noise marks (Holm over all pairs)
NOISE_METRICS = ("final_val_bpb", "best_val_bpb")


@dataclass
class Run:
    """One training run as the comparison sees it, from a run directory or from W&B."""

    name: str  # how the table names it: the run directory, or the W&B run's path
    overrides: list[str]  # the command-line overrides that made it, "key=value"
    parameters: dict[str, int] = field(default_factory=dict)  # gpt_oss.info.parameter_counts
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl's records


# ------------------------------------------------------------------------------- loading
def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (those holding metrics.jsonl) at or below each path, in job order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: give run or multirun directories")
        if (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        below = sorted((p.parent for p in path.rglob("metrics.jsonl")), key=_natural_key)
        if not below:
            raise FileNotFoundError(f"{path} holds no run (no metrics.jsonl at or below it)")
        found.extend(below)
    return list(dict.fromkeys(found))


def _natural_key(path: Path) -> list[Any]:
    """Sort job 10 after job 9: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def load_run(run_dir: str | Path, root: Path | None = None) -> Run:
    """A run from its directory; `root` shortens its name to the path below it."""
    run_dir = Path(run_dir)
    config = _read_yaml(run_dir / "config.yaml") or {}
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    name = str(run_dir.relative_to(root)) if root and run_dir != root else str(run_dir)
    return Run(
        name,
        [str(o) for o in overrides],
        dict(config.get("parameters") or {}),
        read_metrics(run_dir / "metrics.jsonl"),
    )


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run at or below the given paths; names are relative to a single given folder."""
    root = Path(paths[0]) if len(paths) == 1 else None
    return [load_run(run_dir, root) for run_dir in find_run_dirs(paths)]


def load_wandb_runs(
    group: str, project: str, entity: str | None = None, api: Any = None
) -> list[Run]:
    """The runs of one W&B group (a sweep), through wandb.Api(); needs network and a login."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    runs = []
    # the group itself, and its per-setting subgroups '<group>/<setting>' (seeds, train.seed_group)
    filters = {"group": {"$regex": f"^{re.escape(group)}(/|$)"}}
    for wandb_run in api.runs(path, filters=filters):
        config = dict(wandb_run.config)  # flattened by gpt_oss.tracking: "parameters.total"
        parameters = {
            k[len("parameters.") :]: v for k, v in config.items() if k.startswith("parameters.")
        }
        # the command's overrides (gpt_oss.train.provenance); runs logged before they were
        # recorded are named by Hydra's override_dirname: overrides joined by ","
        overrides = config.get("provenance.overrides") or split_overrides(wandb_run.name or "")
        runs.append(Run("/".join(wandb_run.path), overrides, parameters, wandb_records(wandb_run)))
    if not runs:
        raise LookupError(f"W&B project {path!r} has no runs in group {group!r}")
    return runs


def wandb_records(wandb_run: Any) -> list[dict[str, Any]]:
    """A W&B run's history as metrics.jsonl records (val loss and bpb; train tokens/s)."""
    val_keys, train_keys = (
        ["_step", "val/loss", "val/bpb"],
        ["_step", "train/tokens_per_s", "train/tokens"],
    )
    records = [
        {"step": row["_step"], "split": "val", "loss": row["val/loss"], "bpb": row["val/bpb"]}
        for row in wandb_run.scan_history(keys=val_keys)
    ]
    records += [
        {
            "step": row["_step"],
            "split": "train",
            "tokens_per_s": row["train/tokens_per_s"],
            "tokens": row["train/tokens"],
        }
        for row in wandb_run.scan_history(keys=train_keys)
    ]
    return sorted(records, key=lambda r: (r["step"], r["split"] == "val"))


def split_overrides(text: str) -> list[str]:
    """'a=1,b=[x,y]' -> ['a=1', 'b=[x,y]']: split on the commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [p for p in [*parts, current] if p]


# ------------------------------------------------------------------------------- the table
def parse_override(override: str) -> tuple[str, str]:
    """'+model.num_experts=8' -> ('model.num_experts', '8'), with Hydra's quoting and
    escaping undone ("model.layer_types=$\\{layers\\:all_full\\}" -> '${layers:all_full}')."""
    key, _, value = override.partition("=")
    value = re.sub(r"\\(.)", r"\1", value.strip())
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key.lstrip("+~"), value


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """The override keys whose values differ between runs (missing counts as a value), in
    the order they first appear; one run alone has none."""
    settings = [dict(map(parse_override, run.overrides)) for run in runs]
    keys = list(dict.fromkeys(key for s in settings for key in s))
    return [key for key in keys if len({s.get(key) for s in settings}) > 1]


def summarize(run: Run, swept: Sequence[str] = ()) -> dict[str, Any]:
    """One table row: the run, its swept settings, parameter counts and its metrics."""
    settings = dict(map(parse_override, run.overrides))
    val = [r for r in run.records if r.get("split") == "val"]
    train = [r for r in run.records if r.get("split") == "train"]
    # step 1 also times the first-call warm-up (allocations, compilation): leave it out
    speeds = [r["tokens_per_s"] for r in train if "tokens_per_s" in r and r["step"] > 1]
    speeds = speeds or [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
    row: dict[str, Any] = {"run": run.name}
    row |= {key: settings.get(key, "") for key in swept}
    shown = [f"{key}={settings[key]}" for key in swept if key in settings]
    row["overrides"] = " ".join(shown if swept else run.overrides)
    row |= {
        "params_total": run.parameters.get("total", math.nan),
        "params_active": run.parameters.get("active", math.nan),
        "best_val_loss": min((r["loss"] for r in val), default=math.nan),
        "final_val_loss": val[-1]["loss"] if val else math.nan,
        "best_val_bpb": min((r["bpb"] for r in val if "bpb" in r), default=math.nan),
        "final_val_bpb": val[-1].get("bpb", math.nan) if val else math.nan,
        "tokens_per_s": statistics.median(speeds) if speeds else math.nan,
        "steps": max((r["step"] for r in run.records), default=0),
        "tokens": max((r.get("tokens", 0) for r in run.records), default=0),
    }
    return row


def compare_rows(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[str]]:
    """(table rows, swept keys) for the runs."""
    swept = swept_keys(runs)
    return [summarize(run, swept) for run in runs], swept


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if column in ("params_total", "params_active", "tokens_per_s", "steps", "tokens"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table (run, overrides, then COLUMNS)."""
    columns = ["run", "overrides", *COLUMNS]
    lines = [
        "| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
        "|" + "|".join("---" if c in ("run", "overrides") else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row[c], c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """All columns (each swept key its own) as CSV, full precision."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------ seed noise
@dataclass(frozen=True)
class Estimate:
    """One metric over the seeds of one setting: the mean and its interval (nan below 2 seeds)."""

    values: tuple[float, ...]
    mean: float
    low: float
    high: float


def estimate(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean of the finite `values` and its two-sided `confidence` interval,
    mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n), with s the sample standard deviation
    (Student's t: the seeds are a small sample of a normal-ish spread). nan for n < 2."""
    finite = tuple(float(v) for v in values if math.isfinite(v))
    if not finite:
        return Estimate(finite, math.nan, math.nan, math.nan)
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return Estimate(finite, mean, math.nan, math.nan)
    half = stats.t.ppf((1 + confidence) / 2, len(finite) - 1) * statistics.stdev(finite)
    half /= math.sqrt(len(finite))
    return Estimate(finite, mean, mean - half, mean + half)


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(t, degrees of freedom, two-sided p) of Welch's t-test of mean(a) == mean(b).

    Welch, not Student: the settings compared (dense vs MoE, 4 vs 32 experts) need not share
    one seed variance, and Welch keeps its error rate when they do not. nan below 2 values
    on either side, or when both sides have no spread at all."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): with every pair of settings tested,
    "adjusted p < alpha" bounds the chance of any false beyond-noise mark by alpha. nan stays."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def setting_name(row: dict[str, Any], swept: Sequence[str]) -> str:
    """The row's swept settings other than the seed, 'key=value ...' ('all runs' if none)."""
    return " ".join(f"{k}={row[k]}" for k in swept if k != SEED_KEY) or "all runs"


def seed_noise_tables(
    rows: Sequence[dict[str, Any]], swept: Sequence[str], metric: str = "final_val_bpb"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per setting, one row per pair of settings) over the runs' seeds.

    Setting rows: the setting's swept values, `seeds`, and for each of NOISE_METRICS (and
    `metric`) its mean, low and high. Pair rows: `a`, `b`, the difference of their `metric`
    means (a - b), Welch's t, df and p, Holm's adjusted p over all pairs, and
    `beyond_noise` = adjusted p < ALPHA."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(setting_name(row, swept), []).append(row)
    metrics = list(dict.fromkeys([*NOISE_METRICS, metric]))
    settings = []
    for name, members in groups.items():
        record: dict[str, Any] = {"setting": name}
        record |= {k: members[0][k] for k in swept if k != SEED_KEY}
        record["seeds"] = len(members)
        for m in metrics:
            e = estimate(r[m] for r in members)
            record |= {f"{m}_mean": e.mean, f"{m}_low": e.low, f"{m}_high": e.high}
        settings.append(record)
    names = list(groups)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            values_a = estimate(r[metric] for r in groups[a]).values
            values_b = estimate(r[metric] for r in groups[b]).values
            t, df, p = welch_test(values_a, values_b)
            difference = statistics.fmean(values_a) - statistics.fmean(values_b)
            pairs.append({"a": a, "b": b, "difference": difference, "t": t, "df": df, "p": p})
    for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs]), strict=True):
        pair["p_holm"] = adjusted
        pair["beyond_noise"] = bool(adjusted < ALPHA)  # nan compares False: never marked
    return settings, pairs


def _interval(row: dict[str, Any], metric: str) -> str:
    mean, low, high = (row[f"{metric}_{part}"] for part in ("mean", "low", "high"))
    if math.isnan(low):
        return f"{mean:.4f}" if not math.isnan(mean) else "-"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def settings_table(settings: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    """Markdown: one row per setting, each metric as 'mean [95% interval]'."""
    headers = ["setting", "seeds", *(f"{HEADERS[m]} (mean [95% CI])" for m in metrics)]
    lines = ["| " + " | ".join(headers) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for row in settings:
        cells = [row["setting"].replace("|", "\\|"), str(row["seeds"])]
        lines.append("| " + " | ".join(cells + [_interval(row, m) for m in metrics]) + " |")
    return "\n".join(lines)


def pairs_table(pairs: Sequence[dict[str, Any]], metric: str) -> str:
    """Markdown: one row per pair of settings with Welch's test and the beyond-noise mark."""
    lines = [
        f"| A | B | A - B ({HEADERS[metric]}) | Welch t | df | p | p (Holm) | beyond noise |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for pair in pairs:
        numbers = [
            f"{pair[k]:+.4f}" if k == "difference" else _number(pair[k])
            for k in ("difference", "t", "df", "p", "p_holm")
        ]
        mark = "**yes**" if pair["beyond_noise"] else "no"
        lines.append(f"| {pair['a']} | {pair['b']} | " + " | ".join(numbers) + f" | {mark} |")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


# -------------------------------------------------------------------------------- the plot
def as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def plot_comparison(
    runs: Sequence[Run],
    rows: Sequence[dict[str, Any]],
    swept: Sequence[str],
    path: str | Path,
    x: str | None = None,
    metric: str = "final_val_bpb",
) -> Path:
    """Left: validation loss curves overlaid. Right: `metric` against swept key `x` (default
    the first that is not the seed), one line per value of the other swept keys; numeric x
    when every value is a number (log2 scale when they span 4x or more), categorical
    otherwise. With seeds swept, the right panel shows each setting's mean over its seeds
    with its 95% interval as an error bar."""
    settings = [k for k in swept if k != SEED_KEY]
    x = x or (settings[0] if settings else None)
    if x is not None and x not in settings:
        raise ValueError(f"--x {x!r} is not a swept key; swept keys are {settings}")
    fig, (curves, final) = plt.subplots(1, 2, figsize=(13, 4.8))
    for run, row in zip(runs, rows, strict=True):
        steps, losses = series(run.records, "val")
        curves.plot(steps, losses, marker="o", ms=3, lw=1.5, label=row["overrides"] or row["run"])
    curves.set(xlabel="step", ylabel="validation loss (nats/token)", title="validation loss")
    curves.grid(alpha=0.3)
    curves.ticklabel_format(axis="y", useOffset=False)
    curves.legend(fontsize=7)
    if SEED_KEY in swept:
        points, _ = seed_noise_tables(rows, swept, metric)
        _plot_final(final, points, settings, x, metric, interval=True)
    else:
        _plot_final(final, rows, settings, x, metric)
    return save_figure(fig, path)


def _plot_final(
    ax,
    rows: Sequence[dict[str, Any]],
    swept: Sequence[str],
    x: str | None,
    metric: str,
    interval: bool = False,
) -> None:
    """`metric` by `x`; with `interval`, rows are setting rows and each point is the mean with
    its interval as an error bar."""
    values = [row[x] if x else row.get("run", row.get("setting")) for row in rows]
    numbers = [as_number(str(v)) for v in values]
    numeric = all(n is not None for n in numbers)
    positions = numbers if numeric else [list(dict.fromkeys(values)).index(v) for v in values]
    others = [k for k in swept if k != x]
    lines: dict[str, list[tuple[float, float, float, float]]] = {}
    for row, position in zip(rows, positions, strict=True):
        label = " ".join(f"{k}={row[k]}" for k in others)
        if interval:
            mean, low, high = (row[f"{metric}_{p}"] for p in ("mean", "low", "high"))
        else:
            mean = low = high = row[metric]
        lines.setdefault(label, []).append((position, mean, low, high))
    for label, points in lines.items():
        points.sort()
        xs, means, lows, highs = (list(v) for v in zip(*points, strict=True))
        style = {"marker": "o", "ls": "-" if numeric else "", "label": label or None}
        if interval:
            below = [
                m - lo if math.isfinite(lo) else 0.0 for m, lo in zip(means, lows, strict=True)
            ]
            above = [h - m if math.isfinite(h) else 0.0 for m, h in zip(means, highs, strict=True)]
            ax.errorbar(xs, means, yerr=[below, above], capsize=4, **style)
        else:
            ax.plot(xs, means, **style)
    if numeric and min(numbers) > 0 and max(numbers) >= 4 * min(numbers):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(numbers)), [f"{n:g}" for n in sorted(set(numbers))])
    elif not numeric:
        categories = list(dict.fromkeys(values))
        ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    title = f"{HEADERS.get(metric, metric)} by {x or 'run'}"
    if interval:
        title += f" (mean, {CONFIDENCE:.0%} interval over seeds)"
    ax.set(xlabel=x or "run", ylabel=HEADERS.get(metric, metric), title=title)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)
    if others:
        ax.legend(fontsize=7)


# ------------------------------------------------------------------------------ the command
def compare(
    runs: Sequence[Run], out_dir: str | Path, x: str | None = None, metric: str = "final_val_bpb"
) -> tuple[str, Path, Path]:
    """Write comparison.csv and comparison.png under out_dir (and, when the runs differ in
    trainer.seed, settings.csv and pairs.csv); returns (markdown, csv, png)."""
    if not runs:
        raise ValueError("no runs to compare")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, swept = compare_rows(runs)
    csv_path = write_csv(rows, out_dir / "comparison.csv")
    png_path = plot_comparison(runs, rows, swept, out_dir / "comparison.png", x=x, metric=metric)
    markdown = markdown_table(rows)
    if SEED_KEY in swept:
        settings, pairs = seed_noise_tables(rows, swept, metric)
        write_csv(settings, out_dir / "settings.csv")
        metrics = list(dict.fromkeys([*NOISE_METRICS, metric]))
        markdown += "\n\nBy setting, over its seeds:\n\n" + settings_table(settings, metrics)
        if pairs:
            write_csv(pairs, out_dir / "pairs.csv")
            markdown += (
                f"\n\nPairs of settings, {HEADERS[metric]}: Welch's t-test, Holm-adjusted over "
                f"{len(pairs)} pairs; beyond noise = adjusted p < {ALPHA}\n\n"
                + pairs_table(pairs, metric)
            )
    return markdown, csv_path, png_path
