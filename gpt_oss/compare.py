"""Compare runs side by side: a table (markdown on the terminal, CSV on disk) and one PNG.

    python -m gpt_oss.compare outputs/multirun/2026-11-25/10-00-00     # a sweep's jobs
    python -m gpt_oss.compare RUN_DIR RUN_DIR ... --out cmp/            # any run directories
    python -m gpt_oss.compare --wandb-group gpt-oss-10-00-00 --wandb-project gpt-oss-lab --out cmp/

Local runs are read from their directories (config.yaml, metrics.jsonl, .hydra/overrides.yaml),
with no network. The swept settings are the overrides whose values differ between the runs.
The command line only; the comparison itself is gpt_oss.studies.compare.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gpt_oss.studies.compare import COLUMNS, compare, load_runs, load_wandb_runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gpt_oss.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("paths", nargs="*", help="a multirun directory, or run directories")
    parser.add_argument(
        "--out",
        help="where comparison.csv/.png go (default: the one directory "
        "given, else the current directory)",
    )
    parser.add_argument(
        "--x", help="the swept key on the second panel's x axis (default: the first)"
    )
    parser.add_argument(
        "--metric",
        default="final_val_bpb",
        choices=[c for c in COLUMNS if "val" in c],
        help="the second panel's y axis, and the metric the seed-noise test compares",
    )
    parser.add_argument("--wandb-group", help="read this W&B group's runs instead of directories")
    parser.add_argument("--wandb-project", default="gpt-oss-lab")
    parser.add_argument("--wandb-entity")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb_group):
        parser.error("give run/multirun directories or --wandb-group, not both or neither")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.wandb_group:
            runs = load_wandb_runs(args.wandb_group, args.wandb_project, args.wandb_entity)
        else:
            runs = load_runs(args.paths)
        out = args.out or (args.paths[0] if len(args.paths) == 1 else ".")
        table, csv_path, png_path = compare(runs, out, x=args.x, metric=args.metric)
    except (FileNotFoundError, LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    print(f"\n{len(runs)} runs; table: {csv_path}; plot: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
