"""`evaluate(source, bench)`: one benchmark's numbers for a checkpoint, bundle or engine.

Everything goes through the runtime's `Embedder`, so every backend and
precision is measured the same way. The command line (`python -m
agff_deploy.eval`) and the benchmarks (bench.ablation, bench.precision_cost)
call this; neither reimplements a benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agff_deploy.errors import InputError
from runtime.embedder import Embedder

from .metrics import hit_at_1, mmvp_pair_correct, recall_at_k
from .mmeb import META_TASKS, MMEBItem, Side, load_mmeb, meta_task
from .mmvp_vlm import load_mmvp_vlm
from .synthetic import EVAL_SEED, global_retrieval_set, mmvp_pairs

BENCHES = ("synthetic-mmvp", "synthetic-global", "mmvp-vlm", "mmeb")


def pair_scores(model: Embedder, image_emb: np.ndarray, statement_emb: np.ndarray) -> np.ndarray:
    """`[P, 2 statements, 2 images]` from per-pair image and statement embeddings `[2P, K+1, D]`."""
    scores = [model.score(image_emb[i : i + 2], statement_emb[i : i + 2]).T for i in range(0, len(image_emb), 2)]
    return np.stack(scores)


def mmvp_report(patterns: list[str], correct: np.ndarray) -> dict[str, Any]:
    per_pattern = {p: float(correct[[q == p for q in patterns]].mean()) for p in dict.fromkeys(patterns)}
    return {"pairs": len(patterns), "per_pattern": per_pattern, "mean": float(np.mean(list(per_pattern.values())))}


def synthetic_mmvp(model: Embedder, seed: int, pairs_per_pattern: int) -> dict[str, Any]:
    pairs = mmvp_pairs(pairs_per_pattern, seed, model.spec.image.size[0])
    images = model.embed_images([im for p in pairs for im in p.images])
    statements = model.embed_texts([s for p in pairs for s in p.statements])
    return mmvp_report([p.pattern for p in pairs], mmvp_pair_correct(pair_scores(model, images, statements)))


def synthetic_global(model: Embedder, seed: int, count: int) -> dict[str, Any]:
    images, captions = global_retrieval_set(count, seed, model.spec.image.size[0])
    scores = model.score(model.embed_images(images), model.embed_texts(captions))
    return {
        "items": count,
        "image_to_text": {"R@1": recall_at_k(scores, 1), "R@5": recall_at_k(scores, 5)},
        "text_to_image": {"R@1": recall_at_k(scores.T, 1), "R@5": recall_at_k(scores.T, 5)},
    }


def mmvp_vlm(model: Embedder, folder: Path) -> dict[str, Any]:
    pairs = load_mmvp_vlm(folder)
    images = model.embed_images([im for p in pairs for im in p.images])
    statements = model.embed_texts([s for p in pairs for s in p.statements])
    return mmvp_report([p.pattern for p in pairs], mmvp_pair_correct(pair_scores(model, images, statements)))


def _embed_sides(model: Embedder, sides: list[Side]) -> np.ndarray:
    images = {i: s.image for i, s in enumerate(sides) if s.image is not None}
    text_only = [i for i, s in enumerate(sides) if s.image is None]
    out: dict[int, np.ndarray] = {}
    if images:
        emb = model.embed_images(list(images.values()), [sides[i].text for i in images])
        out.update(zip(images, emb, strict=True))
    if text_only:
        out.update(zip(text_only, model.embed_texts([sides[i].text for i in text_only]), strict=True))
    return np.stack([out[i] for i in range(len(sides))])


def _item_scores(model: Embedder, item: MMEBItem) -> np.ndarray:
    query = _embed_sides(model, [item.query])
    candidates = _embed_sides(model, list(item.candidates))
    image_query = item.query.image is not None or all(c.image is None for c in item.candidates)
    return model.score(query, candidates)[0] if image_query else model.score(candidates, query)[:, 0]


def mmeb(model: Embedder, folder: Path, image_root: Path | None) -> dict[str, Any]:
    """hit@1 of every subset with rows; a subset without rows is skipped with a warning (its hit@1 is undefined)."""
    hits = {}
    for name, items in load_mmeb(folder, image_root).items():
        if not items:
            print(f"warning: MMEB subset {folder / name} has no rows; skipped", file=sys.stderr)
            continue
        hits[name] = hit_at_1([_item_scores(model, item) for item in tqdm(items, desc=name, leave=False)])
    return mmeb_report(hits)


def mmeb_report(hits: dict[str, float]) -> dict[str, Any]:
    """Overall and meta-task scores are means over MMEB's 36 subsets only, as VLM2Vec reports them;
    other subsets (CIFAR-100 ships in MMEB-eval) are kept apart so they cannot shift the score."""
    scored = {name: hit for name, hit in hits.items() if meta_task(name)}
    tasks = {task: [scored[name] for name in names if name in scored] for task, names in META_TASKS.items()}
    return {
        "per_subset": scored,
        "per_meta_task": {task: float(np.mean(task_hits)) for task, task_hits in tasks.items() if task_hits},
        "overall": float(np.mean(list(scored.values()))) if scored else None,
        "scored_subsets": len(scored),
        "outside_score": {name: hit for name, hit in hits.items() if not meta_task(name)},
    }


def evaluate(
    source: str | Path,
    bench: str,
    seed: int = EVAL_SEED,
    pairs_per_pattern: int = 150,
    data: Path | None = None,
    image_root: Path | None = None,
    backend: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    if bench not in BENCHES:
        raise InputError(f"unknown --bench {bench}; choose one of {', '.join(BENCHES)}")
    if bench in ("mmvp-vlm", "mmeb") and data is None:
        raise InputError(f"--bench {bench} needs --data DIR (the benchmark folder as downloaded)")
    with Embedder.load(source, backend, precision) as model:
        if bench == "synthetic-mmvp":
            result = synthetic_mmvp(model, seed, pairs_per_pattern)
        elif bench == "synthetic-global":
            result = synthetic_global(model, seed, 512)
        elif bench == "mmvp-vlm":
            result = mmvp_vlm(model, Path(data))
        else:
            result = mmeb(model, Path(data), image_root)
        result["source"] = {"path": str(source), "backend": model.backend, "precision": precision or "fp32"}
    return result
