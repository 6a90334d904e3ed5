"""Precision cost: the fp32, fp16 and int8 graphs of one bundle on both synthetic benchmarks.

Run: python -m bench.precision_cost BUNDLE [--eval-seed 7] [--pairs-per-pattern 150]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agff_deploy.eval.evaluate import evaluate
from agff_deploy.manifest import read_manifest
from agff_deploy.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--eval-seed", type=int, default=7)
    parser.add_argument("--pairs-per-pattern", type=int, default=150)
    args = parser.parse_args()
    precisions = list(read_manifest(args.bundle).graphs)
    rows = {}
    for precision in precisions:
        mmvp = evaluate(args.bundle, "synthetic-mmvp", args.eval_seed, args.pairs_per_pattern, precision=precision)
        glob = evaluate(args.bundle, "synthetic-global", args.eval_seed, precision=precision)
        rows[precision] = {
            "mmvp_mean": mmvp["mean"],
            "per_pattern": mmvp["per_pattern"],
            "i2t_r1": glob["image_to_text"]["R@1"],
            "t2i_r1": glob["text_to_image"]["R@1"],
        }
    base = rows["fp32"]
    print(f"{'precision':<14}{'MMVP pair acc':>14}{'vs fp32':>9}{'i2t R@1':>9}{'t2i R@1':>9}")
    for precision, r in rows.items():
        delta = 100 * (r["mmvp_mean"] - base["mmvp_mean"])
        acc, i2t, t2i = 100 * r["mmvp_mean"], 100 * r["i2t_r1"], 100 * r["t2i_r1"]
        print(f"{precision:<14}{acc:>14.1f}{delta:>+9.1f}{i2t:>9.1f}{t2i:>9.1f}")
    print(
        json.dumps(
            {
                "bench": "precision_cost",
                "eval_seed": args.eval_seed,
                "results": rows,
                **provenance("bench.precision_cost", args),
            }
        )
    )


if __name__ == "__main__":
    main()
