"""`python -m agff_deploy.eval SOURCE --bench NAME`: evaluate a checkpoint, ONNX bundle or engine.

Benchmarks: synthetic-mmvp, synthetic-global, mmvp-vlm (--data DIR), mmeb (--data DIR).
Everything goes through the runtime's `Embedder`, so every backend and
precision is measured the same way. Prints a table; --json writes the numbers
(and, for MMVP benchmarks, a per-pattern bar chart beside them when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .metrics import hit_at_1, mmvp_pair_correct, recall_at_k
from .mmeb import MMEBItem, Side, load_mmeb, meta_task
from .mmvp_vlm import load_mmvp_vlm
from .synthetic import global_retrieval_set, mmvp_pairs

BENCHES = ("synthetic-mmvp", "synthetic-global", "mmvp-vlm", "mmeb")


def pair_scores(model, image_emb: np.ndarray, statement_emb: np.ndarray) -> np.ndarray:
    """`[P, 2 statements, 2 images]` from per-pair image and statement embeddings `[2P, K+1, D]`."""
    scores = [model.score(image_emb[i : i + 2], statement_emb[i : i + 2]).T for i in range(0, len(image_emb), 2)]
    return np.stack(scores)


def mmvp_report(patterns: list[str], correct: np.ndarray) -> dict[str, Any]:
    per_pattern = {p: float(correct[[q == p for q in patterns]].mean()) for p in dict.fromkeys(patterns)}
    return {"pairs": len(patterns), "per_pattern": per_pattern, "mean": float(np.mean(list(per_pattern.values())))}


def synthetic_mmvp(model, seed: int, pairs_per_pattern: int) -> dict[str, Any]:
    pairs = mmvp_pairs(pairs_per_pattern, seed, model.spec.image_size[0])
    images = model.embed_images([im for p in pairs for im in p.images])
    statements = model.embed_texts([s for p in pairs for s in p.statements])
    return mmvp_report([p.pattern for p in pairs], mmvp_pair_correct(pair_scores(model, images, statements)))


def synthetic_global(model, seed: int, count: int) -> dict[str, Any]:
    images, captions = global_retrieval_set(count, seed, model.spec.image_size[0])
    scores = model.score(model.embed_images(images), model.embed_texts(captions))
    return {
        "items": count,
        "image_to_text": {"R@1": recall_at_k(scores, 1), "R@5": recall_at_k(scores, 5)},
        "text_to_image": {"R@1": recall_at_k(scores.T, 1), "R@5": recall_at_k(scores.T, 5)},
    }


def mmvp_vlm(model, folder: Path) -> dict[str, Any]:
    pairs = load_mmvp_vlm(folder)
    images = model.embed_images([im for p in pairs for im in p.images])
    statements = model.embed_texts([s for p in pairs for s in p.statements])
    return mmvp_report([p.pattern for p in pairs], mmvp_pair_correct(pair_scores(model, images, statements)))


def _embed_sides(model, sides: list[Side]) -> np.ndarray:
    with_image = [i for i, s in enumerate(sides) if s.image is not None]
    text_only = [i for i, s in enumerate(sides) if s.image is None]
    out: dict[int, np.ndarray] = {}
    if with_image:
        emb = model.embed_images([sides[i].image for i in with_image], [sides[i].text for i in with_image])
        out.update(zip(with_image, emb, strict=True))
    if text_only:
        out.update(zip(text_only, model.embed_texts([sides[i].text for i in text_only]), strict=True))
    return np.stack([out[i] for i in range(len(sides))])


def _item_scores(model, item: MMEBItem) -> np.ndarray:
    query = _embed_sides(model, [item.query])
    candidates = _embed_sides(model, list(item.candidates))
    image_query = item.query.image is not None or all(c.image is None for c in item.candidates)
    return model.score(query, candidates)[0] if image_query else model.score(candidates, query)[:, 0]


def mmeb(model, folder: Path, image_root: Path | None) -> dict[str, Any]:
    subsets = load_mmeb(folder, image_root)
    per_subset = {
        name: hit_at_1([_item_scores(model, item) for item in tqdm(items, desc=name, leave=False)])
        for name, items in subsets.items()
    }
    tasks: dict[str, list[float]] = defaultdict(list)
    for name, hit in per_subset.items():
        tasks[meta_task(name)].append(hit)
    return {
        "per_subset": per_subset,
        "per_meta_task": {task: float(np.mean(hits)) for task, hits in tasks.items()},
        "overall": float(np.mean(list(per_subset.values()))),
    }


def table(bench: str, result: dict[str, Any]) -> str:
    if bench in ("synthetic-mmvp", "mmvp-vlm"):
        rows = [f"{p:<14}{100 * a:6.1f}" for p, a in result["per_pattern"].items()]
        return "\n".join([f"{'pattern':<14}{'pair acc %':>6}", *rows, f"{'mean':<14}{100 * result['mean']:6.1f}"])
    if bench == "synthetic-global":
        i2t, t2i = result["image_to_text"], result["text_to_image"]
        return (
            f"{'direction':<14}{'R@1':>7}{'R@5':>7}\n"
            f"{'image->text':<14}{100 * i2t['R@1']:7.1f}{100 * i2t['R@5']:7.1f}\n"
            f"{'text->image':<14}{100 * t2i['R@1']:7.1f}{100 * t2i['R@5']:7.1f}"
        )
    rows = [f"{name:<22}{100 * hit:6.1f}" for name, hit in result["per_subset"].items()]
    rows += [f"[{task}]".ljust(22) + f"{100 * hit:6.1f}" for task, hit in result["per_meta_task"].items()]
    return "\n".join([f"{'subset':<22}{'hit@1':>6}", *rows, f"{'overall':<22}{100 * result['overall']:6.1f}"])


def evaluate(
    source: str | Path,
    bench: str,
    seed: int = 0,
    pairs_per_pattern: int = 150,
    data: Path | None = None,
    image_root: Path | None = None,
    backend: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    from runtime.embedder import Embedder

    if bench in ("mmvp-vlm", "mmeb") and data is None:
        raise ValueError(f"--bench {bench} needs --data DIR (the benchmark folder as downloaded)")
    with Embedder.load(source, backend, precision) as model:
        if bench == "synthetic-mmvp":
            result = synthetic_mmvp(model, seed, pairs_per_pattern)
        elif bench == "synthetic-global":
            result = synthetic_global(model, seed, 512)
        elif bench == "mmvp-vlm":
            result = mmvp_vlm(model, Path(data))
        elif bench == "mmeb":
            result = mmeb(model, Path(data), image_root)
        else:
            raise ValueError(f"unknown --bench {bench}; choose one of {', '.join(BENCHES)}")
        result["source"] = {"path": str(source), "backend": model.backend, "precision": precision or "fp32"}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agff_deploy.eval", description=__doc__)
    p.add_argument("source", help="checkpoint folder, bundle folder, ONNX graph or TensorRT plan")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--seed", type=int, default=0, help="evaluation seed for the synthetic benchmarks")
    p.add_argument("--pairs-per-pattern", type=int, default=150)
    p.add_argument("--data", type=Path, help="benchmark folder for mmvp-vlm and mmeb")
    p.add_argument("--image-root", type=Path, help="folder MMEB image paths are relative to (default: --data)")
    p.add_argument("--backend", help="force a runtime backend")
    p.add_argument("--precision", help="bundle precision to evaluate (default: fp32)")
    p.add_argument("--json", type=Path, help="write the numbers here (and a PNG chart beside them)")
    args = p.parse_args(argv)
    try:
        result = evaluate(args.source, args.bench, args.seed, args.pairs_per_pattern, args.data, args.image_root,
                          args.backend, args.precision)  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(args.bench, result))
    if args.json:
        args.json.write_text(json.dumps({"bench": args.bench, **result}, indent=2) + "\n")
        if "per_pattern" in result:
            _chart({Path(args.source).name: result["per_pattern"]}, args.json.with_suffix(".png"), args.bench)
    return 0


def _chart(variants: dict[str, dict[str, float]], path: Path, title: str) -> None:
    from .plot import pattern_bar_chart

    try:
        print(f"chart: {pattern_bar_chart(variants, path, title)}")
    except ImportError as err:
        print(f"no chart: {err}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
