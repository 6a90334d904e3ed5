"""int8 on ONNX Runtime CPU: Q/DQ (TensorRT's form) and dynamic quantization against fp32.

Speed of the image encoder at batch 8, min cosine to fp32, and top-1
agreement with fp32 when matching held-out synthetic images to their captions.
Run at the demo preset (a trained --ckpt gives meaningful agreement) and at a
realistic width (hidden 896, random weights: speed only means something there).
Speeds are timed in --processes fresh processes (one draw each).
Run: python -m bench.int8 [--ckpt ckpt/] [--batch 8] [--threads 2] [--pairs 256] [--processes 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from agff_deploy.contract import GRAPHS
from agff_deploy.provenance import provenance
from agff_deploy.scenes import make_scene
from export.check import agreement as min_cosine_and_max_abs
from export.graphs import export_graph
from export.precision import quantize_dynamic_int8, quantize_qdq

from .common import (
    OneGraphImageEncoder,
    OneGraphTextEncoder,
    Spread,
    image_feeds,
    in_fresh_processes,
    model_for,
    ort_session,
    random_model,
    session_medians,
)

VARIANTS = ("fp32", "int8-qdq", "int8-dynamic")


def export_variants(model, encoder, name: str, folder: Path) -> dict[str, Path]:
    with_image = name == "image_encoder"
    lo, hi = encoder.formatter.length_range(with_image=with_image)
    dims = {"batch": (1, 64), "length": (max(2, lo), hi)}
    if with_image:
        feeds = image_feeds(encoder, 2)
        module = OneGraphImageEncoder(model)
    else:
        feeds = encoder.feeds(["a red circle", "two small blue squares"])
        module = OneGraphTextEncoder(model)
    fp32 = folder / f"{name}-fp32.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        export_graph(module, GRAPHS[name], tuple(torch.from_numpy(v) for v in feeds.values()), fp32, 18, dims)
    qdq = folder / f"{name}-qdq.onnx"
    quantize_qdq(fp32, qdq, _calibration(encoder, with_image))
    return {"fp32": fp32, "int8-qdq": qdq, "int8-dynamic": quantize_dynamic_int8(fp32, folder / f"{name}-dyn.onnx")}


def _calibration(encoder, with_image: bool, samples: int = 64, batch: int = 8) -> list[dict]:
    """One-graph calibration feeds: built-in scenes with instructions, or their captions."""
    scenes = [make_scene(500_000_000 + i) for i in range(samples)]
    if not with_image:
        return [encoder.feeds([s.caption() for s in scenes[i : i + batch]]) for i in range(0, samples, batch)]
    return [
        encoder.feeds([""] * len(scenes[i : i + batch]), encoder.render(scenes[i : i + batch]))
        for i in range(0, samples, batch)
    ]


def embed_in_chunks(run, encoder, texts: list[str], images, chunk: int = 32):
    """`run` on one feed per chunk of items, concatenated."""
    parts = []
    for i in range(0, len(texts), chunk):
        parts.append(run(encoder.feeds(texts[i : i + chunk], None if images is None else images[i : i + chunk])))
    return np.concatenate(parts)


def agreement(model, encoder, image_sessions, text_sessions, pairs: int) -> dict[str, float]:
    scenes = [make_scene(800_000_000 + i, held_out=True) for i in range(pairs)]
    images = encoder.render(scenes)
    captions = [s.caption() for s in scenes]
    top1 = {}
    for variant in VARIANTS:
        img = embed_in_chunks(lambda f, s=image_sessions[variant]: s.run(None, f)[0], encoder, [""] * pairs, images)
        txt = embed_in_chunks(lambda f, s=text_sessions[variant]: s.run(None, f)[0], encoder, captions, None)
        with torch.no_grad():
            top1[variant] = model.similarity(torch.from_numpy(img), torch.from_numpy(txt)).argmax(1).numpy()
    return {v: float((top1[v] == top1["fp32"]).mean()) for v in VARIANTS[1:]}


def measure(label: str, model, encoder, batch: int, threads: int, pairs: int, processes: int, folder: Path) -> dict:
    image_paths = export_variants(model, encoder, "image_encoder", folder / label)
    sessions = {v: ort_session(p, threads) for v, p in image_paths.items()}
    feeds = image_feeds(encoder, batch, first=1234)
    outputs = {v: s.run(None, feeds)[0] for v, s in sessions.items()}
    draws = in_fresh_processes(session_medians, image_paths, feeds, threads, 10, processes=processes)
    result = {
        "label": label,
        "hidden_size": model.config.hidden_size,
        "processes": processes,
        "ms": {v: Spread.of(d[v] * 1000 for d in draws) for v in VARIANTS},
        "speedup_vs_fp32": {v: Spread.of(d["fp32"] / d[v] for d in draws) for v in VARIANTS[1:]},
        "min_cosine_vs_fp32": {
            v: round(min_cosine_and_max_abs(outputs[v], outputs["fp32"])[0], 6) for v in VARIANTS[1:]
        },
    }
    if pairs:
        text_paths = export_variants(model, encoder, "text_encoder", folder / label)
        text_sessions = {v: ort_session(p, threads) for v, p in text_paths.items()}
        result["top1_agreement_vs_fp32"] = agreement(model, encoder, sessions, text_sessions, pairs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path, help="trained demo checkpoint (for the accuracy figures)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes to time in (one draw each)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo, demo_encoder = model_for(args.ckpt)
    wide, wide_encoder = random_model("wide")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, encoder, pairs in (
            ("demo", demo, demo_encoder, args.pairs if args.ckpt else 0),
            ("wide-896", wide, wide_encoder, 0),
        ):
            (Path(tmp) / label).mkdir()
            r = measure(label, model, encoder, args.batch, args.threads, pairs, args.processes, Path(tmp))
            results.append(r)
            ms, speed, cos = r["ms"], r["speedup_vs_fp32"], r["min_cosine_vs_fp32"]
            line = (
                f"{label:<9} hidden {r['hidden_size']:>4}, median [min..max] over {r['processes']} processes: "
                f"fp32 {ms['fp32']:.1f} ms | Q/DQ {ms['int8-qdq']:.1f} ms "
                f"({speed['int8-qdq']:.2f}x, cos {cos['int8-qdq']:.4f}) | dynamic {ms['int8-dynamic']:.1f} ms "
                f"({speed['int8-dynamic']:.2f}x, cos {cos['int8-dynamic']:.4f})"
            )
            if "top1_agreement_vs_fp32" in r:
                agree = r["top1_agreement_vs_fp32"]
                line += f" | top-1 agreement Q/DQ {agree['int8-qdq']:.1%}, dynamic {agree['int8-dynamic']:.1%}"
            print(line)
    print(
        json.dumps(
            {
                "bench": "int8",
                "batch": args.batch,
                "threads": args.threads,
                "results": results,
                **provenance("bench.int8", args),
            },
            default=Spread.to_json,
        )
    )


if __name__ == "__main__":
    main()
