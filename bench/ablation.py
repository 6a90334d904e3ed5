"""The AGFF/EGA ablation: same preset, steps and seeds; three variants; both synthetic benchmarks.

    baseline      single global embedding, plain cosine, plain InfoNCE   (--num-fine 0 --ega-alpha 0)
    agff          fused global + fine-grained prompts, no EGA             (--ega-alpha 0)
    agff+ega      fused prompts with EGA hard-negative amplification      (--ega-alpha ALPHA)

Training seeds 0..S-1; evaluation on its own seed 7 (never used to tune anything: investigate with
--eval-seed set to another seed).
Prints the table (mean and spread over seeds), writes JSON and a per-pattern bar chart.
Run: python -m bench.ablation [--steps 600] [--seeds 3] [--out ablation/]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agff_deploy.eval.__main__ import evaluate
from agff_deploy.eval.plot import pattern_bar_chart

EVAL_SEED = 7
VARIANTS = {
    "baseline": ["--num-fine", "0", "--ega-alpha", "0"],
    "agff": ["--ega-alpha", "0"],
    "agff+ega": [],
}


def train(folder: Path, variant: str, seed: int, steps: int, preset: str, alpha: float, tasks: str) -> Path:
    out = folder / f"{variant}-seed{seed}"
    if (
        not (out / "trainer_state.json").is_file()
        or json.loads((out / "trainer_state.json").read_text())["step"] < steps
    ):
        extra = VARIANTS[variant] or ["--ega-alpha", str(alpha)]
        command = [sys.executable, "-m", "train.run", "--out", str(out), "--preset", preset, "--steps", str(steps),
                   "--seed", str(seed), "--tasks", tasks, "--eval-pairs", "0", *extra]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
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
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--alpha", type=float, default=1.0, help="EGA alpha of the agff+ega variant")
    parser.add_argument("--tasks", default="i2t", help="training task mix, as for train.run")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    parser.add_argument("--pairs-per-pattern", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("ablation"))
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in range(args.seeds):
        for variant in VARIANTS:
            ckpt = train(args.out, variant, seed, args.steps, args.preset, args.alpha, args.tasks)
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
