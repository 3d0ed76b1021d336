"""Loss-curve plots: PNGs a person looks at instead of reading metrics.jsonl."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def series(
    records: list[dict[str, Any]], split: str, key: str = "loss"
) -> tuple[list[int], list[float]]:
    """(steps, values) of one split's metric from metrics.jsonl records."""
    points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    return [p[0] for p in points], [p[1] for p in points]


def save_figure(fig, path: str | Path) -> Path:
    """Write a PNG atomically (a reader never sees half a file) and close the figure."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train and validation loss against step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", dict(alpha=0.6, lw=1)), ("val", dict(marker="o", lw=2))):
        steps, values = series(records, split)
        if steps:
            ax.plot(steps, values, label=f"{split} loss", **style)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title or "loss")
    return save_figure(fig, path)


def expert_load_figure(load: list[list[float]], title: str = "expert load"):
    """Heatmap of each expert's share of its layer's tokens, (layers, experts): a balanced layer
    is one flat colour at 1/experts. Returns the matplotlib Figure (the caller closes it)."""
    num_layers, num_experts = len(load), len(load[0]) if load else 0
    fig, ax = plt.subplots(
        figsize=(min(2 + 0.3 * num_experts, 14), min(1.5 + 0.3 * num_layers, 10))
    )
    image = ax.imshow(load, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the layer's tokens")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(f"{title} (balanced = {1 / max(num_experts, 1):.3g})")
    return fig
