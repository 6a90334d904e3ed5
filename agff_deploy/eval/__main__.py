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
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .metrics import hit_at_1, mmvp_pair_correct, recall_at_k
from .mmeb import META_TASKS, SCORED_SUBSETS, MMEBItem, Side, load_mmeb, meta_task
from .mmvp_vlm import load_mmvp_vlm
from .synthetic import EVAL_SEED, global_retrieval_set, mmvp_pairs

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


def _percent(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.1f}"


def _aligned(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    """Two columns, the first as wide as its longest entry, so long names (`Structural Character`) keep it aligned."""
    width = max(len(name) for name, _ in [header, *rows]) + 2
    value_width = max(len(value) for _, value in [header, *rows])
    return "\n".join(f"{name:<{width}}{value:>{value_width}}" for name, value in [header, *rows])


def _mmvp_table(result: dict[str, Any]) -> str:
    rows = [(pattern, _percent(acc)) for pattern, acc in result["per_pattern"].items()]
    return _aligned(("pattern", "pair acc %"), [*rows, ("mean", _percent(result["mean"]))])


def _mmeb_table(result: dict[str, Any]) -> str:
    rows = [(name, _percent(hit)) for name, hit in result["per_subset"].items()]
    rows += [(f"[{task}]", _percent(hit)) for task, hit in result["per_meta_task"].items()]
    label = f"overall ({result['scored_subsets']} of {len(SCORED_SUBSETS)} MMEB subsets)"
    rows.append((label, _percent(result["overall"])))
    rows += [(f"{name} (outside MMEB's score)", _percent(hit)) for name, hit in result["outside_score"].items()]
    return _aligned(("subset", "hit@1 %"), rows)


def table(bench: str, result: dict[str, Any]) -> str:
    if bench in ("synthetic-mmvp", "mmvp-vlm"):
        return _mmvp_table(result)
    if bench == "synthetic-global":
        i2t, t2i = result["image_to_text"], result["text_to_image"]
        return (
            f"{'direction':<14}{'R@1':>7}{'R@5':>7}\n"
            f"{'image->text':<14}{100 * i2t['R@1']:7.1f}{100 * i2t['R@5']:7.1f}\n"
            f"{'text->image':<14}{100 * t2i['R@1']:7.1f}{100 * t2i['R@5']:7.1f}"
        )
    return _mmeb_table(result)


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agff_deploy.eval", description=__doc__)
    p.add_argument("source", help="checkpoint folder, bundle folder, ONNX graph or TensorRT plan")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="evaluation seed for the synthetic benchmarks")
    p.add_argument("--pairs-per-pattern", type=int, default=150)
    p.add_argument("--data", type=Path, help="benchmark folder for mmvp-vlm and mmeb")
    p.add_argument("--image-root", type=Path, help="folder MMEB image paths are relative to (default: --data)")
    p.add_argument("--backend", help="force a runtime backend")
    p.add_argument("--precision", help="bundle precision to evaluate (default: fp32)")
    p.add_argument("--json", type=Path, help="write the numbers here (and a PNG chart beside them)")
    return p


def _prepare_json(path: Path) -> None:
    """Create the --json folder before evaluating, so a bad path fails in seconds instead of losing the numbers."""
    if path.is_dir():
        raise ValueError(f"--json {path} is a folder; give a file name such as {path / 'result.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--json {path}: cannot create the folder {path.parent} ({err.strerror}: {err.filename}); "
            "choose another path"
        ) from err


def _write_json(path: Path, bench: str, result: dict[str, Any]) -> None:
    """allow_nan=False: NaN is not JSON, and a reader would choke on it far from here."""
    path.write_text(json.dumps({"bench": bench, **result}, indent=2, allow_nan=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.json:
            _prepare_json(args.json)
        result = evaluate(args.source, args.bench, args.seed, args.pairs_per_pattern, args.data, args.image_root,
                          args.backend, args.precision)  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(args.bench, result))
    if args.json:
        _write_json(args.json, args.bench, result)
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
