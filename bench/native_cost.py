"""Native resolution against the fixed square, side by side on one bundle, in one process.

    python -m bench.native_cost BUNDLE [--size 448] [--repeat 3] [-o native-cost.json]

A native-resolution bundle's graphs take images of any size, so the same sessions run both ways: each photo at its
own `smart_resize` size (what the model was trained and gated with), and squashed to SIZE x SIZE (the single static
shape a TensorRT user may pick). Reports each photo's image tokens both ways, latency per image at batch 1 and
throughput at batch 8 (medians over interleaved repeats), and the bundle's gate rows (batches of mixed sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from agff_deploy.atomic_files import write_json
from agff_deploy.errors import AgffError, InputError, print_error
from agff_deploy.manifest import read_manifest
from agff_deploy.preprocessing import ImagePreprocessor
from agff_deploy.provenance import provenance
from runtime.embedder import Embedder


def photos() -> dict[str, Image.Image]:
    """Real photos of mixed aspect ratios and sizes: four as shipped, a panorama, a tall crop and a thumbnail."""
    shipped = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }
    made = {
        "coffee-panorama": Image.fromarray(data.coffee()).resize((1200, 300), Image.Resampling.LANCZOS),
        "chelsea-tall": Image.fromarray(data.chelsea()[:, 100:250]),
        "astronaut-thumbnail": Image.fromarray(data.astronaut()).resize((96, 96), Image.Resampling.LANCZOS),
    }
    return {**{name: Image.fromarray(pixels) for name, pixels in shipped.items()}, **made}


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(bundle: Path, size: int, repeat: int) -> dict:
    images = photos()
    with Embedder.load(bundle) as model:
        image = model.spec.image
        if image.resize != "native":
            raise InputError(f"{bundle} was exported at a fixed size; this compares native resolution with it")
        square = ImagePreprocessor(size, size, mean=image.mean, std=image.std)
        ways = {
            "native": [model.preprocessor.normalize(model.preprocessor.resize(im)) for im in images.values()],
            "fixed": [square.normalize(square.resize(im)) for im in images.values()],
        }
        step = image.patch_size * image.merge_size
        per_photo = [
            {
                "photo": name,
                "size": list(im.size),
                **{f"{way}_tokens": int(np.prod(ways[way][i].shape[1:])) // step**2 for way in ways},
            }
            for i, (name, im) in enumerate(images.items())
        ]
        model.embed_pixels(ways["native"][:1])  # first run: session initialisation, not latency
        times: dict[str, dict[str, list[float]]] = {way: {"batch1": [], "batch8": []} for way in ways}
        for _ in range(repeat):
            for way, pixels in ways.items():
                model.batch_size = 1
                times[way]["batch1"].append(seconds(lambda: [model.embed_pixels([p]) for p in pixels]))  # noqa: B023
                model.batch_size = 8
                times[way]["batch8"].append(seconds(lambda: model.embed_pixels(pixels)))  # noqa: B023
        count = len(images)
        summary = {
            way: {
                "ms_per_image_batch1": 1000 * statistics.median(t["batch1"]) / count,
                "images_per_s_batch8": count / statistics.median(t["batch8"]),
            }
            for way, t in times.items()
        }
    native, fixed = summary["native"], summary["fixed"]
    return {
        "photos": per_photo,
        "latency": summary,
        "native_over_fixed": {
            "latency_batch1": native["ms_per_image_batch1"] / fixed["ms_per_image_batch1"],
            "throughput_batch8": native["images_per_s_batch8"] / fixed["images_per_s_batch8"],
            "tokens": sum(p["native_tokens"] for p in per_photo) / sum(p["fixed_tokens"] for p in per_photo),
        },
        "gate": [dataclasses.asdict(row) for row in read_manifest(bundle).parity.rows],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.native_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="a bundle exported at native resolution")
    p.add_argument("--size", type=int, default=448, help="the fixed square to compare with (default: 448)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("-o", "--out", type=Path, help="JSON record to write")
    args = p.parse_args(argv)
    try:
        result = measure(args.bundle, args.size, args.repeat)
    except (AgffError, OSError) as err:
        return print_error(err)
    record = {**result, "provenance": provenance("bench.native_cost", args, argv)}
    for row in result["photos"]:
        print(
            f"{row['photo']:>20} {row['size'][0]}x{row['size'][1]}: {row['native_tokens']} tokens native, "
            f"{row['fixed_tokens']} at {args.size} px"
        )
    ratio = result["native_over_fixed"]
    print(
        f"native / fixed: tokens {ratio['tokens']:.2f}, latency at batch 1 {ratio['latency_batch1']:.2f}, "
        f"throughput at batch 8 {ratio['throughput_batch8']:.2f}"
    )
    if args.out:
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
