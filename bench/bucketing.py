"""Size bucketing against input-order batching, on photos of mixed sizes at native resolution.

Trains a short native-resolution model at --preset (its weights do not change the speed), exports its fp32 bundle,
and embeds one folder of real photos (skimage's, plus thumbnails, panoramas, tall strips and enlargements of them,
in a shuffled order, as a folder listing mixes them) through the runtime's batch pipeline twice per round: batches
in input order (windows of one batch) and batches by size (windows of --window batches, `runtime.bucketing`).
Reports the median images/s of --repeat interleaved rounds, the patch rows each way computes (padding included),
and the largest difference between the two ways' embeddings.

Run: python -m bench.bucketing [--preset demo] [--max-pixels 200704] [--images 192] [--batch 8] [--window 8]
     [--repeat 7] [--threads 2] [--out docs/bucketing.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from agff_deploy.atomic_files import write_json
from agff_deploy.provenance import provenance
from runtime.embedder import Embedder
from runtime.pipeline import EmbedPixels, Outcome, embed_in_batches

from .throughput import PHOTOS

# How each photo is varied: a function of the RGB array and the photo's index (so crops differ between copies).
VARIANTS: dict[str, Callable[[np.ndarray, int], Image.Image]] = {
    "photo": lambda a, i: Image.fromarray(a[i % 17 :, i % 11 :]),
    "thumbnail": lambda a, i: _shrunk(a, 64 + 8 * (i % 5)),
    "small": lambda a, i: _shrunk(a, 160 + 16 * (i % 5)),
    "panorama": lambda a, i: Image.fromarray(a[a.shape[0] // 2 - a.shape[0] // 10 - i % 9 : a.shape[0] // 2 + 30]),
    "tall": lambda a, i: Image.fromarray(a[:, a.shape[1] // 2 - 40 - i % 9 : a.shape[1] // 2 + a.shape[1] // 12]),
    "enlarged": lambda a, i: Image.fromarray(a).resize((a.shape[1] * 2, a.shape[0] * 2), Image.Resampling.BICUBIC),
}


def _shrunk(pixels: np.ndarray, side: int) -> Image.Image:
    image = Image.fromarray(pixels)
    image.thumbnail((side, side))
    return image


def write_mixed_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs cycling through skimage's photos and the `VARIANTS` of each, shuffled."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = list(VARIANTS)
    paths = []
    for i in range(count):
        photo = getattr(data, PHOTOS[i % len(PHOTOS)])()
        rgb = np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]
        kind = kinds[(i // len(PHOTOS)) % len(kinds)]
        paths.append(folder / f"{i:05d}-{kind}.jpg")
        VARIANTS[kind](rgb, i).save(paths[-1], quality=90)
    order = np.random.default_rng(seed).permutation(count)
    return [paths[i] for i in order]


def build_bundle(folder: Path, preset: str, max_pixels: int, steps: int) -> Path:
    """A gated fp32 bundle of a short native-resolution training run."""
    from agff_deploy.checkpoint import item_encoder, load_checkpoint
    from export.bundle import BundleBuilder, ExportOptions
    from export.targets import get_target
    from train.trainer import Trainer, TrainSettings

    ckpt, bundle = folder / "ckpt", folder / "bundle"
    settings = TrainSettings(
        out=str(ckpt), preset=preset, steps=steps, batch_size=8, eval_pairs=0, image_resize="native",
        max_pixels=max_pixels, save_every=steps,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        Trainer.create(settings).run()
        model, tokenizer = load_checkpoint(ckpt)
        options = ExportOptions(precisions=("fp32",), batch=(1, 8, 64), agreement_pairs=0)
        report = BundleBuilder(model, item_encoder(model.config, tokenizer), ckpt, options, log=print).build(
            bundle, get_target("generic")
        )
    if not report.passed:
        raise RuntimeError(f"the bundle failed its gate:\n{report.table()}")
    return bundle


class PatchCounter:
    """Wraps the embed function: counts the patch rows each batch computes (padded) and the images' own patches."""

    def __init__(self, embed: EmbedPixels, patch_size: int) -> None:
        self.embed, self.patch_size = embed, patch_size
        self.padded = self.own = self.batches = 0

    def __call__(self, pixels: list[np.ndarray], instructions: list[str]) -> np.ndarray:
        patches = [p.shape[1] * p.shape[2] // self.patch_size**2 for p in pixels]
        self.padded += len(patches) * max(patches)
        self.own += sum(patches)
        self.batches += 1
        return self.embed(pixels, instructions)


def run_once(model: Embedder, paths: list[Path], window: int) -> tuple[Outcome, PatchCounter]:
    counter = PatchCounter(model.embed_batch, model.encoder.patch_size)
    outcome = embed_in_batches(
        paths, [""] * len(paths), counter, model.preprocessor, model.batch_size, 64_000_000, window_batches=window
    )
    if outcome.errors:
        raise RuntimeError("; ".join(outcome.errors))
    return outcome, counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=("tiny", "demo"))
    parser.add_argument("--max-pixels", type=int, default=448 * 448)
    parser.add_argument("--steps", type=int, default=5, help="training steps of the model whose bundle is timed")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=8, help="batches whose images are sorted by size together")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/bucketing.json"))
    args = parser.parse_args()
    ways = {"input_order": 1, "bucketed": args.window}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(Path(tmp), args.preset, args.max_pixels, args.steps)
        paths = write_mixed_photos(Path(tmp) / "photos", args.images)
        with Embedder.load(bundle, threads=args.threads) as model:
            model.batch_size = args.batch
            sizes = [p.shape[1] * p.shape[2] // model.encoder.patch_size**2 for p in model.pixels(paths)]
            first = {way: run_once(model, paths, window) for way, window in ways.items()}  # warm-up, and the check
            seconds: dict[str, list[float]] = {way: [] for way in ways}
            inference: dict[str, list[float]] = {way: [] for way in ways}
            for r in range(args.repeat):
                for way in list(ways)[:: 1 if r % 2 == 0 else -1]:  # alternate which way goes first
                    outcome = run_once(model, paths, ways[way])[0]
                    seconds[way].append(outcome.wall_s)
                    inference[way].append(outcome.inference_s)
    embeddings = {way: outcome.stacked() for way, (outcome, _) in first.items()}
    results = {}
    for way, (outcome, counter) in first.items():
        assert outcome.names == [str(p) for p in paths]
        results[way] = {
            "window_batches": ways[way],
            "images_per_s": round(len(paths) / statistics.median(seconds[way]), 2),
            "seconds": [round(s, 4) for s in seconds[way]],
            "inference_images_per_s": round(len(paths) / statistics.median(inference[way]), 2),
            "inference_seconds": [round(s, 4) for s in inference[way]],
            "batches": counter.batches,
            "padded_patches": counter.padded,
            "padding_share": round(1 - counter.own / counter.padded, 4),
        }
    record = {
        "bench": "bucketing",
        "preset": args.preset,
        "images": len(paths),
        "patches_per_image": {
            "min": min(sizes),
            "median": int(statistics.median(sizes)),
            "max": max(sizes),
            "total": sum(sizes),
        },
        "ways": results,
        "speedup": round(results["bucketed"]["images_per_s"] / results["input_order"]["images_per_s"], 3),
        "inference_speedup": round(
            results["bucketed"]["inference_images_per_s"] / results["input_order"]["inference_images_per_s"], 3
        ),
        "padded_patch_ratio": round(
            results["bucketed"]["padded_patches"] / results["input_order"]["padded_patches"], 4
        ),
        "max_abs_difference": float(np.abs(embeddings["bucketed"] - embeddings["input_order"]).max()),
        **provenance("bench.bucketing", args),
    }
    for way, numbers in results.items():
        print(
            f"{way}: {numbers['images_per_s']} images/s (median of {args.repeat}; inference alone "
            f"{numbers['inference_images_per_s']}), {numbers['batches']} batches, "
            f"{numbers['padded_patches']} patch rows computed, {numbers['padding_share']:.1%} of them padding"
        )
    print(
        f"bucketed / input order: {record['speedup']}x images/s ({record['inference_speedup']}x inference alone), "
        f"{record['padded_patch_ratio']}x patch rows; "
        f"max abs difference {record['max_abs_difference']:.2e}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)


if __name__ == "__main__":
    main()
