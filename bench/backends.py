"""Backends: ONNX Runtime fp32 against PyTorch eager fp32 on the CPU, same model, same inputs.

Run: python -m bench.backends [--ckpt ckpt/] [--batch 8] [--threads 2]
(without --ckpt, a random-weight demo-preset model; speed does not depend on training).
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
from export.graphs import export_graph

from .common import OneGraphImageEncoder, OneGraphTextEncoder, image_feeds, interleaved_medians, model_for, ort_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, encoder = model_for(args.ckpt)
    image = image_feeds(encoder, args.batch)
    text = encoder.feeds([f"a scene with {i} red circles at the left" for i in range(args.batch)])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, feeds, length_with_image in (
            ("image_encoder", OneGraphImageEncoder(model), image, True),
            ("text_encoder", OneGraphTextEncoder(model), text, False),
        ):
            lo, hi = encoder.formatter.length_range(with_image=length_with_image)
            dims = {"batch": (1, 64), "length": (max(2, lo), hi)}
            example = tuple(torch.from_numpy(v[:2]) for v in feeds.values())
            with contextlib.redirect_stdout(io.StringIO()):
                path = export_graph(module, GRAPHS[name], example, Path(tmp) / f"{name}.onnx", 18, dims)
            sess = ort_session(path, args.threads)
            tensors = tuple(torch.from_numpy(v) for v in feeds.values())

            def eager(module=module, tensors=tensors):
                with torch.inference_mode():
                    return module(*tensors)

            times = interleaved_medians({"ort": lambda s=sess, f=feeds: s.run(None, f), "torch": eager}, repeat=15)
            diff = float(np.abs(sess.run(None, feeds)[0] - eager().numpy()).max())
            results[name] = {
                "ort_ms": round(times["ort"] * 1000, 2),
                "torch_ms": round(times["torch"] * 1000, 2),
                "ort_speedup": round(times["torch"] / times["ort"], 2),
                "max_abs": diff,
            }
            r = results[name]
            print(
                f"{name:<14} batch {args.batch}: PyTorch eager {r['torch_ms']:.1f} ms | "
                f"ONNX Runtime {r['ort_ms']:.1f} ms -> ORT {r['ort_speedup']:.2f}x faster (outputs agree to {diff:.1e})"
            )
    print(
        json.dumps(
            {
                "bench": "backends",
                "batch": args.batch,
                "threads": args.threads,
                "results": results,
                **provenance("bench.backends", args),
            }
        )
    )


if __name__ == "__main__":
    main()
