"""Index search latency: 10,000 items, global shortlist then fused re-rank, against brute-force fused scoring.

Run: python -m bench.search BUNDLE [--items 10000] [--shortlist 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agff_deploy.provenance import provenance
from runtime.embedder import Embedder
from runtime.index import EmbeddingIndex

from .common import interleaved_medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--shortlist", type=int, default=100)
    args = parser.parse_args()
    with Embedder.load(args.bundle) as model:
        rng = np.random.default_rng(0)
        k1, d = model.embed_texts(["x"]).shape[1:]
        items = rng.normal(size=(args.items, k1, d)).astype(np.float32)
        items /= np.linalg.norm(items, axis=-1, keepdims=True)
        index = EmbeddingIndex("bench", [{"path": f"item{i}"} for i in range(args.items)], items)
        query = model.embed_texts(["a red circle at the left"])[0]
        times = interleaved_medians(
            {
                "two_stage_scorer_graph": lambda: index.search(query, model.score, True, 10, args.shortlist),
                "two_stage_numpy": lambda: index.search(query, model.numpy_score, True, 10, args.shortlist),
                "brute_force_numpy": lambda: model.numpy_score(items, query[None])[:, 0].argsort()[-10:],
            },
            repeat=20,
        )
    result = {k: round(v * 1000, 2) for k, v in times.items()}
    print(
        f"{args.items} items, shortlist {args.shortlist}: two-stage {result['two_stage_scorer_graph']:.1f} ms "
        f"(scorer graph) / {result['two_stage_numpy']:.1f} ms (numpy) "
        f"vs brute-force fused {result['brute_force_numpy']:.1f} ms"
    )
    print(json.dumps({"bench": "search", "items": args.items, "ms": result, **provenance("bench.search", args)}))


if __name__ == "__main__":
    main()
