"""Runtime throughput: embedding a folder of photos with the runtime's batch pipeline on ONNX Runtime CPU,
the share of wall time spent outside inference, and the runner's overhead over a bare session.

Run: python -m bench.throughput BUNDLE [--images 256] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from agff_deploy.contract import IMAGE_ENCODER
from agff_deploy.provenance import provenance
from runtime.embedder import Embedder

from .common import interleaved_medians, ort_session

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")


def write_photos(folder: Path, count: int, side: int | None = None) -> list[Path]:
    """`count` JPEGs made from skimage's real photos (each a different crop; optionally shrunk to `side` px)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = getattr(data, PHOTOS[i % len(PHOTOS)])()
        h, w = photo.shape[:2]
        image = Image.fromarray(photo[i % 17 : h - (i % 13), i % 11 : w - (i % 7)])
        if side:
            image.thumbnail((side, side))
        paths.append(folder / f"{i:05d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def pipeline_numbers(model: Embedder, paths: list[Path], batch: int) -> dict:
    model.try_embed_images(paths[: batch * 2], "", 64_000_000)  # warm-up
    outcome = model.try_embed_images(paths, "", 64_000_000)
    return {
        "images_per_s": round(len(outcome.names) / outcome.wall_s, 1),
        "time_outside_inference": round(1 - outcome.inference_s / outcome.wall_s, 3),
        "inference_ms_per_image": round(outcome.inference_s / len(outcome.names) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Embedder.load(args.bundle, threads=args.threads) as model:
        model.batch_size = args.batch
        paths = write_photos(Path(tmp) / "photos", args.images)
        thumbs = write_photos(Path(tmp) / "thumbs", args.images, side=128)
        pipeline = {
            "photos": pipeline_numbers(model, paths, args.batch),
            "thumbnails": pipeline_numbers(model, thumbs, args.batch),
        }
        feeds = model.encoder.image_feed(model.encoder.patches(model.pixels(paths[: args.batch])), [""] * args.batch)
        runner = model.runners[IMAGE_ENCODER.name]
        bare = ort_session(runner.load_session.path, args.threads)
        times = interleaved_medians(
            {"bare": lambda: bare.run(None, feeds), "runner": lambda: runner.infer(feeds)}, repeat=200
        )
        same = float(np.abs(bare.run(None, feeds)[0] - runner.infer(feeds)[IMAGE_ENCODER.output]).max())
    overhead = {
        "bare_session_ms": round(times["bare"] * 1000, 3),
        "runner_ms": round(times["runner"] * 1000, 3),
        "runner_overhead": round(times["runner"] / times["bare"] - 1, 4),
        "max_abs": same,
    }
    for kind, numbers in pipeline.items():
        print(
            f"folder of {args.images} {kind}, batch {args.batch}: {numbers['images_per_s']} images/s, "
            f"{numbers['time_outside_inference']:.1%} of wall time outside inference "
            f"(inference {numbers['inference_ms_per_image']:.2f} ms/image)"
        )
    print(
        f"image encoder batch {args.batch}: bare ORT session {overhead['bare_session_ms']:.2f} ms | OrtRunner "
        f"{overhead['runner_ms']:.2f} ms ({overhead['runner_overhead']:+.1%})"
    )
    print(
        json.dumps(
            {"bench": "throughput", "pipeline": pipeline, "runner": overhead, **provenance("bench.throughput", args)}
        )
    )


if __name__ == "__main__":
    main()
