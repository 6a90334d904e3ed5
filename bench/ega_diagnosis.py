"""Why EGA does or does not help: the fused model trained under several temperatures, alphas and batch sizes on
tuning seeds, with the share of hard negatives logged through each run.

EGA multiplies the gradient of a negative j of row i by up to 1 + alpha as its relative hardness p_ij / p_ii
nears 1. Three things decide whether that can matter:

    temperature   a learned temperature can sharpen the softmax until hard negatives dominate the gradient
                  anyway; a fixed one (QQMM-embed's released code holds 0.02) cannot
    hardness      the share of negatives with p_ij / p_ii > 0.5 (logged per step as `hard_share`): if almost
                  none are hard, there is nothing to amplify
    batch         more pairs per batch, more near-twins per row

Every setting is the `agff` recipe of `bench.ablation` (same flags) with one change, trained on one tuning seed
and evaluated on the evaluation seeds given, which nothing reported may share. The runs:

    alpha-A            learned temperature, EGA alpha A for each A of --alphas (0: plain InfoNCE)
    fixed-T-alpha-A    temperature held at T for each T of --temperatures, alpha 0 and --alpha
    batch-N-alpha-A    batch N for each N of --batches, alpha 0 and --alpha

Writes OUT/ega-diagnosis.json (per run: metrics, per-pattern accuracy, the hard-negative share and temperature
averaged over each tenth of training) and the chart of the share, OUT/ega-diagnosis.png.

Run: python -m bench.ega_diagnosis --base base-lm --steps 1000 --seed 100 --eval-seeds 200 201 --out diagnosis/
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.atomic_files import write_json
from agff_deploy.errors import ArtifactError
from agff_deploy.provenance import provenance
from bench.ablation import DEMO, evaluate_run, markdown_table, seed_values, train_in_parallel, training_args
from train.trainer import LOG_FILE

WINDOWS = 10  # the log is averaged over this many equal spans of training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ega_diagnosis", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=100, help="the tuning training seed")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[200, 201], help="tuning evaluation seeds")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--alpha", type=float, default=1.0, help="EGA alpha of the fixed-temperature and batch runs")
    p.add_argument("--temperatures", type=float, nargs="*", default=[0.02, 0.05])
    p.add_argument("--batches", type=int, nargs="*", default=[32, 256])
    p.add_argument("--steps", type=int, default=DEMO.steps)
    p.add_argument("--lr", type=float, default=DEMO.lr)
    p.add_argument("--tasks", default=DEMO.tasks)
    p.add_argument("--preset", default=DEMO.preset)
    p.add_argument("--num-fine", type=int, help="K (default: the preset's own)")
    p.add_argument("--base", help="local Qwen2-VL folder to start from, as for train.run")
    p.add_argument("--lora-rank", type=int, help="as for train.run")
    p.add_argument("--chunk-size", type=int, help="GradCache pairs per pass, for the largest batches")
    p.add_argument("--pairs-per-pattern", type=int, default=150)
    p.add_argument("--jobs", type=int, default=2, help="trainings run side by side, sharing the CPU cores")
    p.add_argument("--out", type=Path, default=Path("diagnosis"))
    args = p.parse_args(argv)
    if args.alpha not in args.alphas or 0 not in args.alphas:
        p.error(f"--alphas must hold 0 and --alpha {args.alpha:g}: their learned-temperature runs are the references")
    return args


def settings_grid(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run name -> what it changes in the `agff` recipe (alpha, and temperature / fixed / batch_size)."""
    grid: dict[str, dict[str, Any]] = {f"alpha-{a:g}": {"alpha": a} for a in args.alphas}
    for alpha in (0.0, args.alpha):
        for t in args.temperatures:
            grid[f"fixed-{t:g}-alpha-{alpha:g}"] = {"alpha": alpha, "temperature": t, "fixed_temperature": True}
        for n in args.batches:
            grid[f"batch-{n}-alpha-{alpha:g}"] = {"alpha": alpha, "batch_size": n}
    return grid


def run_command(args: argparse.Namespace, change: dict[str, Any]) -> list[str]:
    """The `train.run` arguments of one setting: bench.ablation's `agff` / `agff+ega` recipe with `change`."""
    recipe = argparse.Namespace(
        **{
            "image_size": None, "freeze_backbone": False, "batch_size": None, "temperature": None,
            "fixed_temperature": False, **vars(args), **change,
        }
    )  # fmt: skip
    variant = "agff+ega" if recipe.alpha else "agff"
    command = training_args(variant, args.seed, recipe)
    if args.chunk_size and (recipe.batch_size or DEMO.batch_size) > args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    return command


def training_curves(folder: Path, windows: int = WINDOWS) -> dict[str, list[float]]:
    """The logged hard-negative share and temperature, each averaged over `windows` equal spans of the run
    (a step logged twice, by a run resumed from an earlier save, counts once: its last row)."""
    log = folder / LOG_FILE
    by_step = {row["step"]: row for row in map(json.loads, log.read_text().splitlines())}
    rows = [by_step[step] for step in sorted(by_step)]
    if not rows or "hard_share" not in rows[-1]:
        raise ArtifactError(f"{log} logs no hard_share (written before it was logged?): delete {folder} to retrain")
    spans = np.array_split(np.arange(len(rows)), min(windows, len(rows)))
    return {
        key: [float(np.mean([rows[i][key] for i in span])) for span in spans]
        for key in ("hard_share", "temperature", "loss")
    }


def run_all(args: argparse.Namespace, grid: dict[str, dict[str, Any]], started: float) -> list[dict[str, Any]]:
    commands = {name: run_command(args, change) for name, change in grid.items()}
    jobs = {name: (args.out / name, command) for name, command in commands.items()}
    results = []
    for name, folder in train_in_parallel(jobs, args.steps, args.jobs):
        evals = [evaluate_run(folder, e, args.pairs_per_pattern) for e in args.eval_seeds]
        values = seed_values([{"variant": name, "seed": args.seed, **r} for r in evals], name, args.seed)
        results.append({"name": name, **grid[name], "command": commands[name], **values,
                        "curves": training_curves(folder)})  # fmt: skip
        print(_line(results[-1], time.perf_counter() - started), flush=True)
    return results


def _line(run: dict[str, Any], elapsed: float) -> str:
    curve = run["curves"]["hard_share"]
    return (
        f"{run['name']}: MMVP {100 * run['mmvp']:.1f}, R@1 i2t {100 * run['i2t_r1']:.1f}, hard share "
        f"{100 * curve[0]:.1f}% -> {100 * curve[-1]:.1f}%, temperature {run['curves']['temperature'][-1]:.4f} "
        f"({elapsed:.0f} s)"
    )


def diagnosis_table(runs: list[dict[str, Any]]) -> str:
    """One row per run: its metrics, its temperature at the end, and its hard-negative share early, midway, late."""
    head = ["run", "MMVP mean", "global i2t R@1", "global t2i R@1", "temperature, last tenth",
            "hard share, first tenth", "sixth tenth", "last tenth"]  # fmt: skip
    rows = []
    for run in runs:
        share = run["curves"]["hard_share"]
        rows.append(
            [
                run["name"],
                *(f"{100 * run[m]:.1f}" for m in ("mmvp", "i2t_r1", "t2i_r1")),
                f"{run['curves']['temperature'][-1]:.4f}",
                *(f"{100 * share[i]:.2f}%" for i in (0, len(share) // 2, -1)),
            ]
        )
    return markdown_table(head, rows)


def hardness_chart(runs: list[dict[str, Any]], path: Path, steps: int) -> Path:
    """The hard-negative share through training, one line per run (dashed where EGA is on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab20").colors
    for colour, run in zip(colours, runs, strict=False):
        share = run["curves"]["hard_share"]
        xs = [(i + 0.5) * steps / len(share) for i in range(len(share))]
        style = "--" if run["alpha"] else "-"  # dashed: with EGA
        ax.plot(xs, [100 * s for s in share], style, color=colour, marker="o", markersize=3, label=run["name"])
    ax.set_xlabel("training step")
    ax.set_ylabel("negatives with p_ij / p_ii > 0.5 (%)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    charted = find_spec("matplotlib") is not None
    if not charted:
        print("warning: matplotlib is not installed; the table and JSON will be written, the chart skipped", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = run_all(args, settings_grid(args), started)
    report = {
        "bench": "ega_diagnosis",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_s": round(time.perf_counter() - started),
        "runs": runs,
        **provenance("bench.ega_diagnosis", args, argv),
    }
    print(diagnosis_table(runs))
    write_json(args.out / "ega-diagnosis.json", report)
    if charted:
        hardness_chart(runs, args.out / "ega-diagnosis.png", args.steps)


if __name__ == "__main__":
    main()
