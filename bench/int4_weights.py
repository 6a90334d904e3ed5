"""Why int4 misses at 2B: random weights, or the method? int4 on a reduced 2B-wide model with random and with
trained-like weights, side by side in one run.

    python -m bench.int4_weights --work DIR -o docs/int4-weights.json

For each seed and each kind of weights, a base of the published architecture at full width and reduced depth
(`agff_deploy.base`) is trained one LoRA step and exported in fp32 with the gate's record (sets A and B and
`--pairs` held-out pairs). Then, from the same fp32 graphs and through the exporter's own code, int4 at each block
size, with and without a float budget (`--int4-float-budget`), each run in ONNX Runtime with its int4 MatMuls'
activations in fp32 (accuracy level 1: what TensorRT's weight-only int4 computes, with fp16 activations) and at
ONNX Runtime's CPU default (level 4: activations rounded to int8 per block as well), and gated against the PyTorch
record: min cosine per pipeline and top-1 retrieval agreement.

Trained-like weights, from the random ones, for the two properties published analyses find in trained
transformers and random initialisation lacks:
- heavy tails: a share (`OUTLIER_SHARE`) of each matrix's entries scaled by `OUTLIER_SCALE` (a small fraction of
  outlier weights, as SpQR (Dettmers et al., 2023) isolates; the bulk stays normal, as QLoRA's NF4 assumes);
- outlier channels: the same few hidden channels (`CHANNEL_SHARE`) of every layer's norm gain multiplied by
  `CHANNEL_SCALE`, so the activations entering every projection carry them (LLM.int8()'s outlier features,
  Dettmers et al., 2022; the massive activations of Sun et al., 2024, in LLMs and ViTs alike).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from agff_deploy.atomic_files import write_atomically
from agff_deploy.base import write_base
from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.contract import ENCODERS, STORED_ENCODERS, resolved_graphs
from agff_deploy.manifest import read_manifest
from agff_deploy.provenance import provenance
from agff_deploy.weights import weight_files
from export.bundle import BundleBuilder, ExportOptions
from export.check import CPU, bars_at, compare
from export.gate_reference import load_gate_reference
from export.targets import get_target
from runtime.loading import ort_runners
from train.trainer import Trainer, TrainSettings

OUTLIER_SHARE, OUTLIER_SCALE = 0.005, 5.0
CHANNEL_SHARE, CHANNEL_SCALE = 0.005, 20.0
BLOCK_SIZES = (64, 128)
FLOAT_BUDGETS = (0.0, 0.1)
ACCURACY_LEVELS = {"fp32 activations (level 1)": "1", "ORT CPU default (level 4)": "4"}
ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
KINDS = ("random", "trained-like")
QK_NORMS = ("q_norm.weight", "k_norm.weight")  # Qwen3's per-head query/key norms set attention's sharpness: kept


def trained_like(base: Path, seed: int) -> None:
    """Rewrite `base`'s shards in place (each through a temporary file) with trained-like statistics."""
    rng = np.random.default_rng(seed)
    channels: dict[int, torch.Tensor] = {}
    for shard in weight_files(base):
        tensors = load_file(str(shard))
        for name, value in tensors.items():
            tensors[name] = _trained_like(name, value, rng, channels)
        tmp = shard.with_name(f".{shard.name}.tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(shard)


def _trained_like(name: str, value: torch.Tensor, rng: np.random.Generator, channels: dict) -> torch.Tensor:
    if value.ndim == 1 and "norm" in name and name.endswith("weight") and not name.endswith(QK_NORMS):
        width = value.shape[0]
        if width not in channels:  # one set of outlier channels per residual width, shared by every layer
            count = max(1, round(CHANNEL_SHARE * width))
            channels[width] = torch.from_numpy(rng.choice(width, count, replace=False))
        out = value.clone()
        out[channels[width]] *= CHANNEL_SCALE
        return out
    if value.ndim != 2 or "embed" in name:
        return value
    mask = torch.from_numpy(rng.random(tuple(value.shape)) < OUTLIER_SHARE)
    return torch.where(mask, value * OUTLIER_SCALE, value)


def fp32_bundle(args: argparse.Namespace, kind: str, seed: int, folder: Path) -> tuple[Path, BundleBuilder]:
    """A base of `kind` at `seed`, one LoRA step, its fp32 bundle with the gate's record; the builder, for int4."""
    base = write_base(args.architecture, folder / "base", args.layers, args.vision_depth, seed=seed)
    if kind == "trained-like":
        trained_like(base, seed)
    settings = TrainSettings(
        out=str(folder / "ckpt"), base=str(base), steps=1, batch_size=2, lr=1e-4, warmup=1, lora_rank=4,
        gradient_checkpointing=True, image_size=args.image_size, eval_pairs=0, seed=seed,
    )  # fmt: skip
    Trainer.create(settings).run()
    model, tokenizer = load_checkpoint(folder / "ckpt")
    options = ExportOptions(
        precisions=("fp32",), agreement_pairs=args.pairs, gate_images=(1, 2), batch=(1, 4, 8), calib_samples=8
    )
    builder = BundleBuilder(model, item_encoder(model.config, tokenizer), folder / "ckpt", options, log=lambda _: None)
    report = builder.build(folder / "bundle", get_target("generic"))
    if not report.passed:
        raise RuntimeError(f"the fp32 gate failed on {folder}:\n{report.table()}")
    return folder / "bundle", builder


def int4_rows(bundle: Path, builder: BundleBuilder, gate: tuple, block: int, budget: float) -> dict[str, Any]:
    """int4 at `block` and `budget` from the bundle's fp32 graphs, gated against `gate` (the bundle's recorded
    PyTorch reference and input sets) at each ONNX Runtime accuracy level."""
    manifest = read_manifest(bundle)
    (bundle / "int4").mkdir(exist_ok=True)
    builder.options = dataclasses.replace(builder.options, int4_block_size=block, int4_float_budget=budget)
    builder.kept_in_float = {}
    fp32 = {name: bundle / manifest.graph("fp32", name).file for name in STORED_ENCODERS}
    files = builder.quantized("int4", fp32)
    entries = {
        name: dataclasses.replace(manifest.graph("fp32", name), file=str(path.relative_to(bundle)))
        for name, path in files.items()
    }
    variant = dataclasses.replace(manifest, graphs={**manifest.graphs, "int4": entries})
    reference, input_sets = gate
    result: dict[str, Any] = {"kept_in_float": len(builder.kept_in_float.get("int4", ()))}
    for label, level in ACCURACY_LEVELS.items():
        candidates = ort_runners(
            bundle, variant, "int4", providers=CPU, graphs=ENCODERS, check_hashes=False,
            session_config={ACCURACY_KEY: level},
        )  # fmt: skip
        rows = compare(reference, candidates, input_sets, bars_at("int4", ENCODERS), "int4")
        result[label] = {
            "min_cosine": {g: min(r.min_cosine for r in rows if r.graph == g) for g in ENCODERS},
            "top1": next(r.top1 for r in rows if r.graph == "retrieval"),
            "passed": all(r.passed for r in rows),
        }
    return result


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and accuracy level: each kind's mean and spread over seeds, and the paired difference."""
    rows = []
    variants = sorted({(r["block"], r["budget"]) for r in runs})
    for block, budget in variants:
        for level in ACCURACY_LEVELS:
            cells: dict[str, Any] = {"block": block, "budget": budget, "level": level}
            by_kind = {
                kind: {
                    r["seed"]: r[level]
                    for r in runs
                    if r["kind"] == kind and (r["block"], r["budget"]) == (block, budget)
                }
                for kind in KINDS
            }
            for kind, results in by_kind.items():
                for metric, value in _metrics(results).items():
                    cells[f"{kind} {metric}"] = value
            seeds = sorted(set(by_kind["random"]) & set(by_kind["trained-like"]))
            diffs = [_worst(by_kind["trained-like"][s]) - _worst(by_kind["random"][s]) for s in seeds]
            cells["paired difference of min cosine (trained-like - random)"] = _mean_sd(diffs)
            rows.append(cells)
    return rows


def _metrics(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    values = list(results.values())
    return {
        "min cosine": _mean_sd([_worst(v) for v in values]),
        "top-1": _mean_sd([v["top1"] for v in values]),
        "passed": sum(v["passed"] for v in values),
        "seeds": len(values),
    }


def _worst(result: dict[str, Any]) -> float:
    """The lower min cosine of the two pipelines (image and text items)."""
    return min(result["min_cosine"].values())


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.int4_weights", description=__doc__)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="the JSON record")
    p.add_argument("--architecture", default="qwen2-vl-2b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vision-depth", type=int, default=4)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--pairs", type=int, default=64, help="held-out pairs of the top-1 check")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    runs = []
    jobs = [(kind, seed) for seed in args.seeds for kind in KINDS]
    for kind, seed in tqdm(jobs, desc="models", unit="model"):
        folder = args.work / f"{kind}-{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        bundle, builder = fp32_bundle(args, kind, seed, folder)
        manifest = read_manifest(bundle)
        specs = resolved_graphs(manifest.sizes())
        gate = load_gate_reference(bundle, manifest.gate, specs, manifest.fusion)
        for block in BLOCK_SIZES:
            for budget in FLOAT_BUDGETS:
                result = int4_rows(bundle, builder, gate, block, budget)
                runs.append({"kind": kind, "seed": seed, "block": block, "budget": budget, **result})
                print(json.dumps(runs[-1]), flush=True)
        shutil.rmtree(folder)
    record = {"runs": runs, "summary": summary(runs), **provenance("bench.int4_weights", args, argv)}
    text = json.dumps(record, indent=2) + "\n"
    write_atomically(args.out, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
