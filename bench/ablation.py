"""The AGFF/EGA ablation: same preset, steps and seeds; three variants; both synthetic benchmarks.

    baseline      single global embedding, plain cosine, plain InfoNCE   (--num-fine 0 --ega-alpha 0)
    agff          fused global + fine-grained prompts, no EGA             (--ega-alpha 0)
    agff+ega      fused prompts with EGA hard-negative amplification      (--ega-alpha ALPHA)

Training seeds 0..S-1; evaluation on its own seed 7 (never used to tune anything: investigate with
--eval-seed set to another seed).
Prints the table (mean and spread over seeds), writes JSON and a per-pattern bar chart.
Run: python -m bench.ablation [--steps 1000] [--seeds 3] [--jobs 2] [--out ablation/]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from agff_deploy.eval.evaluate import evaluate
from agff_deploy.eval.plot import pattern_bar_chart
from train.trainer import TrainSettings

EVAL_SEED = 7
DEMO = TrainSettings()
VARIANTS = {
    "baseline": ["--num-fine", "0", "--ega-alpha", "0"],
    "agff": ["--ega-alpha", "0"],
    "agff+ega": [],
}


def train(folder: Path, variant: str, seed: int, args: argparse.Namespace, threads: int) -> Path:
    """Train one run (skipped when its checkpoint already reached the steps; a shorter one is trained afresh),
    in a subprocess of its own."""
    out = folder / f"{variant}-seed{seed}"
    state = out / "trainer_state.json"
    if not state.is_file() or json.loads(state.read_text())["step"] < args.steps:
        extra = VARIANTS[variant] or ["--ega-alpha", str(args.alpha)]
        command = [sys.executable, "-m", "train.run", "--out", str(out), "--preset", args.preset,
                   "--steps", str(args.steps), "--seed", str(seed), "--tasks", args.tasks, "--eval-pairs", "0",
                   "--threads", str(threads), "--overwrite", *extra]  # fmt: skip
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"training {out} failed:\n{done.stderr[-3000:]}")
    return out


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for variant, results in runs.items():
        mmvp = [r["mmvp"]["mean"] for r in results]
        r1 = [r["global"]["image_to_text"]["R@1"] for r in results]
        t2i = [r["global"]["text_to_image"]["R@1"] for r in results]
        patterns = {
            p: float(np.mean([r["mmvp"]["per_pattern"][p] for r in results])) for p in results[0]["mmvp"]["per_pattern"]
        }
        summary[variant] = {
            "mmvp_mean": float(np.mean(mmvp)),
            "mmvp_std": float(np.std(mmvp)),
            "i2t_r1_mean": float(np.mean(r1)),
            "i2t_r1_std": float(np.std(r1)),
            "t2i_r1_mean": float(np.mean(t2i)),
            "t2i_r1_std": float(np.std(t2i)),
            "per_pattern": patterns,
        }
    return summary


def markdown(summary: dict) -> str:
    patterns = list(next(iter(summary.values()))["per_pattern"])
    head = "| variant | MMVP mean | global i2t R@1 | global t2i R@1 | " + " | ".join(patterns) + " |"
    rows = [head, "|" + " --- |" * (4 + len(patterns))]
    for variant, s in summary.items():
        cells = [f"{100 * s['per_pattern'][p]:.1f}" for p in patterns]
        rows.append(
            f"| {variant} | {100 * s['mmvp_mean']:.1f} ± {100 * s['mmvp_std']:.1f} | "
            f"{100 * s['i2t_r1_mean']:.1f} ± {100 * s['i2t_r1_std']:.1f} | "
            f"{100 * s['t2i_r1_mean']:.1f} ± {100 * s['t2i_r1_std']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=DEMO.steps)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--alpha", type=float, default=1.0, help="EGA alpha of the agff+ega variant")
    parser.add_argument("--tasks", default=DEMO.tasks, help="training task mix, as for train.run")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    parser.add_argument("--pairs-per-pattern", type=int, default=150)
    parser.add_argument("--jobs", type=int, default=2, help="trainings run side by side, sharing the CPU cores")
    parser.add_argument("--out", type=Path, default=Path("ablation"))
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(seed, variant) for seed in range(args.seeds) for variant in VARIANTS]
    with ThreadPoolExecutor(args.jobs) as pool:
        trained = [pool.submit(train, args.out, variant, seed, args, threads) for seed, variant in jobs]
        for (seed, variant), future in zip(jobs, trained, strict=True):
            ckpt = future.result()
            result = {
                "seed": seed,
                "mmvp": evaluate(ckpt, "synthetic-mmvp", args.eval_seed, args.pairs_per_pattern),
                "global": evaluate(ckpt, "synthetic-global", args.eval_seed),
            }
            runs[variant].append(result)
            print(
                f"seed {seed} {variant:<9} MMVP {100 * result['mmvp']['mean']:.1f}  "
                f"global i2t R@1 {100 * result['global']['image_to_text']['R@1']:.1f}  "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    summary = summarise(runs)
    wall = time.perf_counter() - started
    print(markdown(summary))
    runs_done = f"{args.seeds} seeds x {len(VARIANTS)} variants, {args.steps} steps"
    print(f"ablation wall time: {wall / 60:.1f} min ({runs_done})")
    report = {
        "bench": "ablation",
        "steps": args.steps,
        "preset": args.preset,
        "alpha": args.alpha,
        "tasks": args.tasks,
        "eval_seed": args.eval_seed,
        "wall_s": round(wall),
        "summary": summary,
        "runs": runs,
    }
    (args.out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    chart = {v: s["per_pattern"] for v, s in summary.items()}
    pattern_bar_chart(chart, args.out / "ablation.png", f"synthetic-mmvp pair accuracy, {args.seeds} seeds")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    main()
