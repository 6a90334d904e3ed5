"""The AGFF/EGA ablation, paired by training seed: one training recipe, several variants, several seeds.

    baseline            single global embedding, plain cosine, plain InfoNCE   --num-fine 0 --ega-alpha 0
    baseline+ega        single global embedding with EGA                       --num-fine 0 --ega-alpha ALPHA
    agff                fused global + K fine-grained prompts, no EGA          --num-fine K --ega-alpha 0
    agff+ega            fused prompts with EGA hard-negative amplification     --num-fine K --ega-alpha ALPHA
    agff+ega+text-init  agff+ega, prompts initialised from aspect words        ... --prompt-init aspects

K is --num-fine (the preset's own unless given), ALPHA is --alpha. The first variant listed is the reference
(`baseline`, when listed, must come first).

Protocol: each variant is trained once per training seed (--seeds; a claim needs at least 5) with
`python -m train.run`, --jobs trainings side by side sharing the CPU cores, and every checkpoint is evaluated on
synthetic-mmvp and synthetic-global at each evaluation seed (--eval-seeds, at least 2, none of them used to tune
anything; they index held-out scenes, so one may equal a training seed). A run's value is its mean over the
evaluation seeds. Per variant: mean and sample std over training seeds. Per other variant and metric: the
differences variant minus reference seed by seed, in points, their mean and 95% t-interval.

A run folder OUT/<variant>-seed<S> is reused when it reached the steps and its command.json holds the current
training arguments; otherwise it is trained afresh. Prints a line per run, the per-variant and paired tables
(`markdown_tables`), writes OUT/ablation.json (runs and summary as fractions 0..1, paired differences in points)
and the per-pattern chart OUT/ablation.png (skipped, said before the first run, when matplotlib is missing).

Run: python -m bench.ablation --seeds 0 1 2 3 4 --eval-seeds 13 17 --variants baseline agff agff+ega --out ablation/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from scipy import stats

from agff_deploy.atomic_files import write_json
from agff_deploy.eval.evaluate import evaluate
from agff_deploy.eval.plot import pattern_bar_chart
from agff_deploy.provenance import provenance
from train.trainer import STATE_FILE, TrainSettings

DEMO = TrainSettings()
COMMAND_FILE = "command.json"
K = TypeVar("K")
METRICS = {"mmvp": "MMVP mean", "i2t_r1": "global i2t R@1", "t2i_r1": "global t2i R@1"}


@dataclass(frozen=True)
class Variant:
    fused: bool
    ega: bool
    text_init: bool = False


VARIANTS = {
    "baseline": Variant(fused=False, ega=False),
    "baseline+ega": Variant(fused=False, ega=True),
    "agff": Variant(fused=True, ega=False),
    "agff+ega": Variant(fused=True, ega=True),
    "agff+ega+text-init": Variant(fused=True, ega=True, text_init=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds (at least 2)")
    p.add_argument(
        "--eval-seeds", type=int, nargs="+", default=[13, 17], help="evaluation seeds nobody tuned on (at least 2)"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["baseline", "agff", "agff+ega"],
        help="the first is the reference of the paired differences",
    )
    p.add_argument("--num-fine", type=int, help="K of the fused variants (default: the preset's own)")
    p.add_argument("--alpha", type=float, default=1.0, help="EGA alpha of the +ega variants")
    p.add_argument("--steps", type=int, default=DEMO.steps)
    p.add_argument("--lr", type=float, default=DEMO.lr)
    p.add_argument("--tasks", default=DEMO.tasks, help="training task mix, as for train.run")
    p.add_argument("--preset", default=DEMO.preset)
    p.add_argument("--base", help="local Qwen2-VL folder to start from, as for train.run")
    p.add_argument("--lora-rank", type=int, help="as for train.run")
    p.add_argument("--freeze-backbone", action="store_true", help="as for train.run")
    p.add_argument("--image-size", type=int, help="as for train.run")
    p.add_argument("--batch-size", type=int, help="as for train.run")
    p.add_argument("--temperature", type=float, help="as for train.run")
    p.add_argument("--fixed-temperature", action="store_true", help="as for train.run")
    p.add_argument("--pairs-per-pattern", type=int, default=150)
    p.add_argument("--jobs", type=int, default=2, help="trainings run side by side, sharing the CPU cores")
    p.add_argument("--out", type=Path, default=Path("ablation"))
    args = p.parse_args(argv)
    problem = _problem(args)
    if problem:
        p.error(problem)
    return args


def _problem(args: argparse.Namespace) -> str | None:
    """What makes the settings unable to give a paired comparison with an interval (None: nothing)."""
    seeds = (
        ("--seeds", args.seeds, "training seeds: the 95% interval needs a spread over them"),
        ("--eval-seeds", args.eval_seeds, "evaluation seeds: no number rests on a single evaluation seed"),
    )
    for flag, values, why in seeds:
        if len(values) < 2:
            return f"{flag} got {len(values)} seed; it needs at least 2 {why}"
        if len(set(values)) < len(values):
            return f"{flag} lists a seed twice: {' '.join(map(str, values))}"
    if len(set(args.variants)) < len(args.variants) or len(args.variants) < 2:
        return f"--variants needs at least 2 different variants, got {' '.join(args.variants)}"
    if "baseline" in args.variants[1:]:
        return "--variants: baseline, when listed, must come first (the reference of the paired differences)"
    if args.jobs < 1:
        return f"--jobs must be at least 1, got {args.jobs}"
    return None


def training_args(variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The `train.run` arguments that define one run (those of its folder and machine aside: --out, --threads)."""
    kind = VARIANTS[variant]
    flags = ["--preset", args.preset, "--steps", str(args.steps), "--lr", str(args.lr), "--tasks", args.tasks,
             "--seed", str(seed), "--eval-pairs", "0"]  # fmt: skip
    if not kind.fused:
        flags += ["--num-fine", "0"]
    elif args.num_fine is not None:
        flags += ["--num-fine", str(args.num_fine)]
    flags += ["--ega-alpha", str(args.alpha) if kind.ega else "0"]
    if kind.text_init:
        flags += ["--prompt-init", "aspects"]
    given = {"--base": args.base, "--lora-rank": args.lora_rank, "--image-size": args.image_size,
             "--batch-size": args.batch_size, "--temperature": args.temperature}  # fmt: skip
    flags += [text for flag, value in given.items() if value is not None for text in (flag, str(value))]
    switches = {"--freeze-backbone": args.freeze_backbone, "--fixed-temperature": args.fixed_temperature}
    return flags + [flag for flag, on in switches.items() if on]


def reusable(folder: Path, command: list[str], steps: int) -> bool:
    """Whether `folder` holds a finished run of exactly `command` (the training arguments), so need not retrain."""
    state, saved = folder / STATE_FILE, folder / COMMAND_FILE
    if not (state.is_file() and saved.is_file()):
        return False
    return json.loads(state.read_text())["step"] >= steps and json.loads(saved.read_text()) == command


def train(folder: Path, command: list[str], steps: int, threads: int) -> Path:
    """Train one run in a subprocess of its own, unless `folder` already holds it; then record its command."""
    if reusable(folder, command, steps):
        return folder
    (folder / COMMAND_FILE).unlink(missing_ok=True)
    full = [sys.executable, "-m", "train.run", "--out", str(folder), *command, "--threads", str(threads), "--overwrite"]
    done = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training {folder} failed:\n{done.stderr[-3000:]}")
    write_json(folder / COMMAND_FILE, command)
    return folder


def evaluate_run(ckpt: Path, eval_seed: int, pairs_per_pattern: int) -> dict[str, Any]:
    mmvp = evaluate(ckpt, "synthetic-mmvp", eval_seed, pairs_per_pattern)
    retrieval = evaluate(ckpt, "synthetic-global", eval_seed)
    return {
        "eval_seed": eval_seed,
        "mmvp": mmvp["mean"],
        "per_pattern": mmvp["per_pattern"],
        "i2t_r1": retrieval["image_to_text"]["R@1"],
        "t2i_r1": retrieval["text_to_image"]["R@1"],
    }


def train_in_parallel(runs: dict[K, tuple[Path, list[str]]], steps: int, jobs: int) -> Iterator[tuple[K, Path]]:
    """Train every run (its folder and `train.run` arguments), `jobs` at a time, yielding each key and folder in
    the given order as it is ready; after a failure, trainings not yet started never start."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # the evaluations run beside the trainings: at 2 threads on 2 busy cores one took 45 s, at 1 thread 0.8 s (tiny)
    torch.set_num_threads(threads)
    pool = ThreadPoolExecutor(jobs)
    try:
        futures = {key: pool.submit(train, folder, command, steps, threads) for key, (folder, command) in runs.items()}
        for key, future in futures.items():
            yield key, future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def run_all(args: argparse.Namespace, started: float) -> list[dict[str, Any]]:
    """Train every (seed, variant) and evaluate each as it is ready, in order."""
    jobs = {
        (seed, variant): (args.out / f"{variant}-seed{seed}", training_args(variant, seed, args))
        for seed in args.seeds
        for variant in args.variants
    }
    runs: list[dict[str, Any]] = []
    for (seed, variant), folder in train_in_parallel(jobs, args.steps, args.jobs):
        results = [evaluate_run(folder, e, args.pairs_per_pattern) for e in args.eval_seeds]
        runs += [{"variant": variant, "seed": seed, **r} for r in results]
        print(_progress(variant, seed, results, time.perf_counter() - started), flush=True)
    return runs


def _progress(variant: str, seed: int, results: list[dict[str, Any]], elapsed: float) -> str:
    evals = "; ".join(
        f"eval {r['eval_seed']} MMVP {100 * r['mmvp']:.1f}, R@1 i2t {100 * r['i2t_r1']:.1f} t2i {100 * r['t2i_r1']:.1f}"
        for r in results
    )
    return f"{variant} seed {seed}: {evals} ({elapsed:.0f} s)"


def seed_values(runs: list[dict[str, Any]], variant: str, seed: int) -> dict[str, Any]:
    """One training seed's value of `variant`: each metric and pattern averaged over the evaluation seeds."""
    mine = [r for r in runs if r["variant"] == variant and r["seed"] == seed]
    values: dict[str, Any] = {m: float(np.mean([r[m] for r in mine])) for m in METRICS}
    values["per_pattern"] = {p: float(np.mean([r["per_pattern"][p] for r in mine])) for p in mine[0]["per_pattern"]}
    return values


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}


def variant_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over training seeds of each metric and each pattern (fractions, 0..1)."""
    summary: dict[str, Any] = {}
    for metric in METRICS:
        spread = _mean_std([v[metric] for v in per_seed])
        summary[f"{metric}_mean"], summary[f"{metric}_std"] = spread["mean"], spread["std"]
    patterns = per_seed[0]["per_pattern"]
    summary["per_pattern"] = {p: _mean_std([v["per_pattern"][p] for v in per_seed]) for p in patterns}
    return summary


def paired_differences(reference: list[float], variant: list[float]) -> dict[str, Any]:
    """`variant - reference` element by element (both in training-seed order): the per-seed differences,
    their mean and its 95% Student t interval."""
    if len(reference) != len(variant) or len(reference) < 2:
        raise ValueError(f"need two equally long lists of at least 2 seeds, got {len(reference)} and {len(variant)}")
    diffs = np.subtract(variant, reference, dtype=float)
    mean = float(diffs.mean())
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "per_seed": diffs.tolist()}


def comparisons(variants: list[str]) -> list[tuple[str, str]]:
    """(variant, reference) pairs: every variant against the first, and every variant against the listed one
    it adds a single ingredient to (agff+ega against agff: EGA on its own)."""
    reference, *others = variants
    pairs = [(v, reference) for v in others]
    pairs += [(v, v.rsplit("+", 1)[0]) for v in others if "+" in v and v.rsplit("+", 1)[0] in others]
    return pairs


def summarise(runs: list[dict[str, Any]], variants: list[str], seeds: list[int]) -> tuple[dict, dict]:
    """Per-variant summary and, for each of `comparisons`, the paired differences per metric in points,
    under the label "variant - reference"."""
    values = {v: [seed_values(runs, v, s) for s in seeds] for v in variants}
    summary = {v: variant_summary(values[v]) for v in variants}
    paired = {
        f"{v} - {ref}": {m: paired_differences(_points(values[ref], m), _points(values[v], m)) for m in METRICS}
        for v, ref in comparisons(variants)
    }
    return summary, paired


def _points(per_seed: list[dict[str, Any]], metric: str) -> list[float]:
    return [100 * v[metric] for v in per_seed]


def markdown_tables(report: dict[str, Any]) -> str:
    """The per-variant table (mean ± std over training seeds) and the paired table, from an ablation.json."""
    return _variant_table(report["summary"]) + "\n\n" + _paired_table(report)


def _variant_table(summary: dict[str, Any]) -> str:
    patterns = list(next(iter(summary.values()))["per_pattern"])
    rows = [
        [
            variant,
            *(_pm(s[f"{m}_mean"], s[f"{m}_std"]) for m in METRICS),
            *(_pm(**s["per_pattern"][p]) for p in patterns),
        ]
        for variant, s in summary.items()
    ]
    return markdown_table(["variant", *METRICS.values(), *patterns], rows)


def _paired_table(report: dict[str, Any]) -> str:
    settings = report["settings"]
    seeds = ", ".join(map(str, settings["seeds"]))
    head = ["comparison", "metric", "mean difference (points)", "95% CI", f"per training seed ({seeds})", "CI above 0"]
    rows = [
        [label, METRICS[metric], _signed(d["mean"]),
         f"[{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]", ", ".join(map(_signed, d["per_seed"])),
         "yes" if d["ci_low"] > 0 else "no"]
        for label, metrics in report["paired"].items()
        for metric, d in metrics.items()
    ]  # fmt: skip
    return markdown_table(head, rows)


def _signed(points: float) -> str:
    return f"{round(points, 1) + 0.0:+.1f}"  # + 0.0: a difference that rounds to zero reads +0.0, never -0.0


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of the comparison (num_fine, base, lora_rank, image_size, batch_size, temperature: None =
    train.run's own)."""
    names = ("seeds", "eval_seeds", "variants", "num_fine", "alpha", "steps", "lr", "tasks", "preset", "base",
             "lora_rank", "freeze_backbone", "image_size", "batch_size", "temperature", "fixed_temperature",
             "pairs_per_pattern")  # fmt: skip
    return {**{name: getattr(args, name) for name in names}, "reference": args.variants[0]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    charted = find_spec("matplotlib") is not None
    if not charted:
        print("warning: matplotlib is not installed; the tables and ablation.json will be written, the chart "
              "skipped (pip install 'agff-deploy[plot]' for it)", flush=True)  # fmt: skip
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = run_all(args, started)
    summary, paired = summarise(runs, args.variants, args.seeds)
    wall = time.perf_counter() - started
    report = {
        "bench": "ablation",
        "settings": settings(args),
        "wall_s": round(wall),
        "runs": runs,
        "summary": summary,
        "paired": paired,
        **provenance("bench.ablation", args, argv),
    }
    print(markdown_tables(report))
    size = f"{len(args.variants)} variants x {len(args.seeds)} training seeds x {len(args.eval_seeds)} evaluation seeds"
    print(f"ablation wall time: {wall / 60:.1f} min ({size}, {args.steps} steps)")
    write_json(args.out / "ablation.json", report)
    if not charted:
        return
    chart = {v: {p: s["mean"] for p, s in summary[v]["per_pattern"].items()} for v in args.variants}
    title = f"synthetic-mmvp pair accuracy, mean of {len(args.seeds)} training seeds"
    pattern_bar_chart(chart, args.out / "ablation.png", title)


if __name__ == "__main__":
    main()
