"""agff-run's index at corpus scale: build, memory, disk, query latency and recall against the exact fused ranking.

    python -m bench.index_scale BUNDLE --sizes 100000 1000000 --seeds 0 1 2 --seeds-at-largest 1 --out F

The vectors are synthetic at the 2B models' width (D = 1536, K + 1 = 5), drawn to look like the model's own:
- BUNDLE embeds two overlapping crops of each of skimage's photos. From these come the cosine between an item's
  global vector and each of its fine vectors (`global_fine`), and between the global vectors of two views of one
  scene (`two_views`), and the fused score's temperatures and biases.
- Global vectors form clusters (a Gaussian mixture on the sphere) whose members are as close as two views of one
  scene; each fine vector is its item's global vector mixed with a cluster- and prompt-specific direction so that
  cos(global, fine) matches `global_fine`. Independent fine vectors would make any shortlist look bad, copies of
  the global one any shortlist look perfect.
- A query is another view of a random item: each of its vectors has cosine `two_views` with the item's own.

Each stage runs in a fresh process, so its peak RSS is its own: building the index (generation time excluded),
searching it one query at a time (batch 1, the query's embedding excluded), adding 10k new items. Recall@10 is
against the exact fused ranking of every item (float32, recomputed in chunks). Beside it, where it fits in
memory, the naive index (what agff-run index was: one float32 array in RAM, the whole file rewritten by every
update, an exact product over every global vector) on the same vectors and queries.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agff_deploy.atomic_files import write_atomically
from agff_deploy.provenance import provenance
from runtime.scoring import fused_similarity

from .records import percentiles, publish
from .throughput import PHOTOS

DIMENSIONS, VECTORS = 1536, 5
CHUNK = 8192
TOP_K, SHORTLIST = 10, 100
ADDED = 10_000


@dataclass(frozen=True)
class Calibration:
    global_fine: float  # mean cos(global, fine) of one item
    two_views: float  # mean cos of the global vectors of two views of one scene
    t_in: float
    t_f: float
    bias: list[float]


def calibrate(bundle: Path, work: Path) -> tuple[Calibration, dict[str, float]]:
    """What the bundle's own embeddings of real photos look like (see the module docstring)."""
    from PIL import Image
    from skimage import data

    from runtime.embedder import Embedder

    paths = []
    for name in PHOTOS:
        photo = getattr(data, name)()
        width = photo.shape[1]
        for view, crop in (("a", photo[:, : width * 4 // 5]), ("b", photo[:, width // 5 :])):
            paths.append(work / f"{name}-{view}.png")
            Image.fromarray(crop).save(paths[-1])
    with Embedder.load(bundle) as embedder:
        vectors = embedder.embed_images(paths)
        spec = embedder.spec
    global_fine = np.einsum("nd,nkd->nk", vectors[:, 0], vectors[:, 1:]).ravel()
    views = np.einsum("nd,nd->n", vectors[0::2, 0], vectors[1::2, 0])
    calibration = Calibration(
        float(global_fine.mean()), float(views.mean()), float(spec.t_in), float(spec.t_f),
        [float(b) for b in np.asarray(spec.bias).ravel()],
    )  # fmt: skip
    spread = {"global_fine_std": float(global_fine.std()), "two_views_std": float(views.std()), "photos": len(PHOTOS),
              "bundle_shape": list(vectors.shape[1:])}  # fmt: skip
    return calibration, spread


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _mix(direction: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at about `cosine` from each unit `direction` (a random part orthogonal in high dimension)."""
    noise = _unit(rng.standard_normal(direction.shape, np.float32))
    return _unit(cosine * direction + np.sqrt(1 - cosine**2) * noise)


@dataclass(frozen=True)
class Corpus:
    """Items `[n, K+1, D]` regenerated identically chunk by chunk from (seed, chunk number)."""

    size: int
    seed: int
    calibration: Calibration
    clusters: int = 1000

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0])
        globals_ = _unit(rng.standard_normal((self.clusters, DIMENSIONS), np.float32))
        prompts = _unit(rng.standard_normal((VECTORS - 1, self.clusters, DIMENSIONS), np.float32))
        return globals_, prompts

    def chunk(self, number: int, centres: tuple[np.ndarray, np.ndarray], offset: int = 0) -> np.ndarray:
        start = number * CHUNK
        count = min(CHUNK, self.size - start)
        rng = np.random.default_rng([self.seed, 1, offset + number])
        globals_, prompts = centres
        within = float(np.sqrt(self.calibration.two_views))  # two members of a cluster: cos ~ two_views
        cluster = rng.integers(0, self.clusters, count)
        items = np.empty((count, VECTORS, DIMENSIONS), np.float32)
        items[:, 0] = _mix(globals_[cluster], within, rng)
        rho, global_ = self.calibration.global_fine, items[:, 0]
        for k in range(1, VECTORS):
            aspect = _mix(prompts[k - 1][cluster], within, rng)
            aside = _unit(aspect - np.sum(aspect * global_, -1, keepdims=True) * global_)  # orthogonal to the global
            items[:, k] = rho * global_ + np.sqrt(1 - rho**2) * aside  # cos(global, fine) = rho exactly
        return items

    def chunks(self, offset: int = 0) -> Iterator[np.ndarray]:
        centres = self.centres()
        for number in range((self.size + CHUNK - 1) // CHUNK):
            yield self.chunk(number, centres, offset)

    def queries(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` queries, each another view of a random item, and those items' numbers."""
        rng = np.random.default_rng([self.seed, 2])
        targets = np.sort(rng.choice(self.size, count, replace=False))
        centres = self.centres()
        found = {}
        for number in np.unique(targets // CHUNK):
            chunk = self.chunk(int(number), centres)
            for t in targets[targets // CHUNK == number]:
                found[int(t)] = chunk[t - number * CHUNK]
        items = np.stack([found[int(t)] for t in targets])
        return _mix(items, self.calibration.two_views, rng), targets


def item_keys(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"path": f"/corpus/{i:08d}.jpg", "given": "", "size": i, "mtime_ns": i} for i in range(start, start + count)
    ]


def item_number(item: dict[str, Any]) -> int:
    return int(item["path"][len("/corpus/") : -len(".jpg")])


def _timed(chunks: Iterator[np.ndarray], spent: list[float], start: int = 0) -> Iterator[tuple[list, np.ndarray]]:
    """The chunks as (items, vectors), the time spent generating them added to `spent` (build time excludes it)."""
    row = start
    while True:
        began = time.perf_counter()
        vectors = next(chunks, None)
        spent[0] += time.perf_counter() - began
        if vectors is None:
            return
        yield item_keys(row, len(vectors)), vectors
        row += len(vectors)


def peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM, not getrusage: Linux keeps ru_maxrss across exec, so
    a fresh interpreter would report the parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_ours(corpus: Corpus, folder: Path) -> dict[str, Any]:
    from runtime.index import EmbeddingIndex

    spent = [0.0]
    began = time.perf_counter()
    index = EmbeddingIndex.open_or_create(folder, "synthetic")
    index.add_chunks(corpus.size, _timed(corpus.chunks(), spent))
    index.commit()
    return {"build_s": time.perf_counter() - began - spent[0], "generate_s": spent[0], "peak_rss": peak_rss(),
            "disk_bytes": disk_bytes(folder)}  # fmt: skip


def add_ours(corpus: Corpus, folder: Path) -> dict[str, Any]:
    from runtime.index import EmbeddingIndex

    added = Corpus(ADDED, corpus.seed, corpus.calibration)
    spent = [0.0]
    began = time.perf_counter()
    index = EmbeddingIndex.open_or_create(folder, "synthetic")
    index.add_chunks(ADDED, _timed(added.chunks(offset=10**6), spent, start=corpus.size))
    index.commit()
    return {"add_s": time.perf_counter() - began - spent[0], "peak_rss": peak_rss()}


def search_ours(folder: Path, queries: np.ndarray, calibration: Calibration) -> dict[str, Any]:
    from runtime.index import EmbeddingIndex

    began = time.perf_counter()
    index = EmbeddingIndex.load(folder)
    load_s = time.perf_counter() - began
    score = _scorer(calibration)
    latencies, found = [], []
    for query in queries:
        began = time.perf_counter()
        hits = index.search_items(query, score, True, TOP_K, SHORTLIST)
        latencies.append(time.perf_counter() - began)
        found.append([item_number(item) for item, _ in hits])
    return {"load_s": load_s, **percentiles(latencies), "peak_rss": peak_rss(), "found": found}


def build_naive(corpus: Corpus, folder: Path) -> dict[str, Any]:
    """The index agff-run had: one float32 array of every item's vectors, saved whole with every item's key."""
    spent = [0.0]
    began = time.perf_counter()
    parts = [vectors for _, vectors in _timed(corpus.chunks(), spent)]
    embeddings = np.concatenate(parts)
    del parts
    _save_naive(folder, embeddings, item_keys(0, corpus.size))
    return {"build_s": time.perf_counter() - began - spent[0], "generate_s": spent[0], "peak_rss": peak_rss(),
            "disk_bytes": disk_bytes(folder)}  # fmt: skip


def _save_naive(folder: Path, embeddings: np.ndarray, items: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "embeddings.npy", lambda f: np.save(f, embeddings))
    write_atomically(folder / "items.json", lambda f: f.write(json.dumps({"items": items}).encode()))


def add_naive(corpus: Corpus, folder: Path) -> dict[str, Any]:
    added = np.concatenate(list(Corpus(ADDED, corpus.seed, corpus.calibration).chunks(offset=10**6)))
    began = time.perf_counter()
    embeddings = np.load(folder / "embeddings.npy")
    items = json.loads((folder / "items.json").read_text())["items"] + item_keys(corpus.size, ADDED)
    _save_naive(folder, np.concatenate([embeddings, added]), items)
    return {"add_s": time.perf_counter() - began, "peak_rss": peak_rss()}


def search_naive(folder: Path, queries: np.ndarray, calibration: Calibration) -> dict[str, Any]:
    began = time.perf_counter()
    embeddings = np.load(folder / "embeddings.npy")
    json.loads((folder / "items.json").read_text())
    load_s = time.perf_counter() - began
    score = _scorer(calibration)
    latencies, found = [], []
    for query in queries:
        began = time.perf_counter()
        coarse = embeddings[:, 0] @ query[0]
        candidates = np.argpartition(-coarse, SHORTLIST - 1)[:SHORTLIST]
        fine = score(embeddings[candidates], query[None])[:, 0]
        best = candidates[np.argsort(-fine)[:TOP_K]]
        latencies.append(time.perf_counter() - began)
        found.append(best.tolist())
    return {"load_s": load_s, **percentiles(latencies), "peak_rss": peak_rss(), "found": found}


def _scorer(calibration: Calibration) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    bias = np.asarray(calibration.bias, np.float32)
    return lambda a, b: fused_similarity(a, b, calibration.t_in, calibration.t_f, bias)


def exact_top(corpus: Corpus, queries: np.ndarray) -> np.ndarray:
    """Each query's top 10 by the fused score over every item, float32."""
    score = _scorer(corpus.calibration)
    best_scores = np.full((len(queries), TOP_K), -np.inf, np.float32)
    best_items = np.zeros((len(queries), TOP_K), np.int64)
    for number, chunk in enumerate(tqdm(corpus.chunks(), desc="exact ranking", unit="chunk", leave=False)):
        scores = score(chunk, queries).T  # [queries, chunk items], items first as indexed images are
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_items = np.concatenate(
            [best_items, np.arange(len(chunk))[None].repeat(len(queries), 0) + number * CHUNK], 1
        )
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :TOP_K]
        best_scores = np.take_along_axis(merged_scores, keep, 1)
        best_items = np.take_along_axis(merged_items, keep, 1)
    return best_items


def recall(found: list[list[int]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e.tolist())) / TOP_K for f, e in zip(found, exact, strict=True)]))


def _child(stage: Callable[..., dict[str, Any]], args: tuple, answer: Any) -> None:
    answer.put(stage(*args))


def in_fresh_process(stage: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`stage(*args)` in a new interpreter: its peak RSS is its own, not this process's."""
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    process = context.Process(target=_child, args=(stage, args, answer))
    process.start()
    result = answer.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"{stage.__name__} failed (exit code {process.exitcode})")
    return result


def measure_size(size: int, seed: int, calibration: Calibration, args: argparse.Namespace, work: Path) -> dict:
    corpus = Corpus(size, seed, calibration)
    queries, _ = corpus.queries(args.queries)
    exact = exact_top(corpus, queries)
    row: dict[str, Any] = {"size": size, "seed": seed}
    kinds = {"ours": (build_ours, search_ours, add_ours)}
    if size * VECTORS * DIMENSIONS * 4 * 2.5 < args.naive_memory_gb * 2**30:  # the array, its copy on update, slack
        kinds["naive"] = (build_naive, search_naive, add_naive)
    for kind, (build, search, add) in kinds.items():
        folder = work / f"{kind}-{size}-{seed}"
        result = in_fresh_process(build, corpus, folder)
        searched = in_fresh_process(search, folder, queries, calibration)
        result.update({f"search_{k}": v for k, v in searched.items() if k != "found"})
        result["recall_at_10"] = recall(searched["found"], exact)
        result.update({f"add_{k}": v for k, v in in_fresh_process(add, corpus, folder).items()})
        row[kind] = result
        shutil.rmtree(folder)
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and [min, max] over seeds of every number, per size and index."""
    table = []
    for size in sorted({r["size"] for r in rows}):
        mine = [r for r in rows if r["size"] == size]
        entry: dict[str, Any] = {"size": size, "seeds": [r["seed"] for r in mine]}
        for kind in ("ours", "naive"):
            runs = [r[kind] for r in mine if kind in r]
            if runs:
                entry[kind] = {k: {"mean": statistics.mean(r[k] for r in runs), "min": min(r[k] for r in runs),
                                   "max": max(r[k] for r in runs)} for k in runs[0]}  # fmt: skip
        table.append(entry)
    return table


def table(report: dict[str, Any]) -> str:
    lines = ["| items | index | seeds | build s | build peak RSS GiB | disk GiB | search peak RSS GiB | load s | "
             "p50 / p99 ms | recall@10 [min..max] | add 10k s |", "| --- " * 11 + "|"]  # fmt: skip
    for entry in report["summary"]:
        for kind in ("ours", "naive"):
            if kind not in entry:
                continue
            m = {k: v["mean"] for k, v in entry[kind].items()}
            r = entry[kind]["recall_at_10"]
            lines.append(
                f"| {entry['size']:,} | {kind} | {len(entry['seeds'])} | {m['build_s']:.1f} | "
                f"{m['peak_rss'] / 2**30:.2f} | {m['disk_bytes'] / 2**30:.2f} | {m['search_peak_rss'] / 2**30:.2f} | "
                f"{m['search_load_s']:.2f} | {m['search_p50_ms']:.1f} / {m['search_p99_ms']:.1f} | "
                f"{r['mean']:.3f} [{r['min']:.3f}..{r['max']:.3f}] | {m['add_add_s']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.index_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="the bundle whose embeddings the synthetic vectors imitate")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seeds-at-largest", type=int, default=1, help="seeds run at the largest size (the slowest)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--naive-memory-gb", type=float, default=16, help="run the naive index where it fits in this")
    p.add_argument("--work", type=Path, help="where the indexes are built (default: a temporary folder)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        calibration, spread = calibrate(args.bundle, work)
        print(f"calibration: {calibration} {spread}", file=sys.stderr)
        largest = max(args.sizes)
        steps = [(size, seed) for size in args.sizes
                 for seed in (args.seeds[: args.seeds_at_largest] if size == largest else args.seeds)]  # fmt: skip
        rows = [measure_size(size, seed, calibration, args, work)
                for size, seed in tqdm(steps, desc="bench.index_scale", unit="size")]  # fmt: skip
    report = {"bench": "index_scale", "calibration": asdict(calibration), "calibration_spread": spread,
              "dimensions": DIMENSIONS, "vectors": VECTORS, "top_k": TOP_K, "shortlist": SHORTLIST, "added": ADDED,
              "summary": summarize(rows), "rows": rows, **provenance("bench.index_scale", args, argv)}  # fmt: skip
    publish(report, table(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
