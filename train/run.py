"""`python -m train.run`: train AGFF-Embed (the demo preset on built-in scenes by default) into ckpt/.

`torchrun --nproc_per_node N -m train.run ...` trains on N processes (GPUs) with the same global batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from agff_deploy.config import IMAGE_RESIZE_MODES
from agff_deploy.errors import AgffError, InputError, print_error
from agff_deploy.presets import PRESETS

from .pairs import TASKS
from .trainer import OBJECTIVES, PROMPT_INITS, Trainer, TrainSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainSettings()
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__)
    p.add_argument("--out", default=defaults.out, help="checkpoint folder (default: %(default)s)")
    p.add_argument(
        "--preset", default=defaults.preset, choices=sorted(PRESETS), help="model size (default: %(default)s)"
    )
    p.add_argument(
        "--base",
        help="local Qwen2-VL or Qwen3-VL folder (save_pretrained layout) to start from instead of random init",
    )
    p.add_argument(
        "--steps", type=int, help=f"training steps (default: {defaults.steps}; with --resume: the run's own)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="pairs per step over all processes of a torchrun (default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--ega-alpha",
        type=float,
        help="EGA hard-negative amplification (default 0, plain InfoNCE: EGA did not help where measured; 1 is "
        "QQMM-embed's)",
    )
    p.add_argument("--num-fine", type=int, help="fine-grained prompts K (0 = single embedding, plain cosine)")
    p.add_argument("--prompt-length", type=int, help="learned vectors per prompt")
    p.add_argument(
        "--tasks", default=defaults.tasks, help=f"built-in task mix, e.g. i2t:0.8,vqa:0.2 (tasks: {', '.join(TASKS)})"
    )
    p.add_argument("--data", help="MMEB-train style JSONL or parquet file instead of the built-in scenes")
    p.add_argument("--image-root", help="folder the --data image paths are relative to (default: the file's folder)")
    p.add_argument("--max-bad-fraction", type=float, default=defaults.max_bad_fraction)
    p.add_argument("--save-every", type=int, default=defaults.save_every)
    p.add_argument(
        "--eval-pairs", type=int, default=defaults.eval_pairs, help="held-out pairs for the final check (0 = skip)"
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=defaults.objective,
        help="contrastive: train the embedder (default); lm: generative pretraining of the backbone on the "
        "built-in scenes' captions and questions, written as a base folder for --base",
    )
    p.add_argument(
        "--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead of the full backbone"
    )
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        default=None,
        help="train only the prompts, fusion and temperature on a fixed (pretrained --base) backbone",
    )
    p.add_argument(
        "--prompt-init",
        choices=PROMPT_INITS,
        default=defaults.prompt_init,
        help="random (default), or aspects: fine prompt k starts at the embedding of a phrase such as "
        "'the colour', 'how many', 'where'",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="the contrastive softmax temperature's start (default: the preset's, 0.05 for the built-in ones)",
    )
    p.add_argument(
        "--fixed-temperature",
        action="store_true",
        default=None,
        help="hold the temperature at --temperature instead of learning it (QQMM-embed's released code holds it "
        "at 0.02)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute block activations in backward (the memory saver for 2B+ bases)",
    )
    p.add_argument(
        "--chunk-size",
        type=_positive,
        help="GradCache: embed at most this many pairs per pass on each process; same result, less memory, "
        "one extra forward pass (default: the whole batch at once)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="a fixed square input resolution, a multiple of 28 (default: the preset's from scratch; native "
        "resolution with --base)",
    )
    p.add_argument(
        "--image-resize",
        choices=IMAGE_RESIZE_MODES,
        help="native: keep each image's aspect ratio, sized as the base's processor does (default with --base); "
        "fixed: squash every image to --image-size (one static shape, for TensorRT users who want one)",
    )
    p.add_argument(
        "--min-pixels", type=_positive, help="native resolution: fewest pixels per image (default: the base's)"
    )
    p.add_argument(
        "--max-pixels", type=_positive, help="native resolution: most pixels per image (default: the base's)"
    )
    p.add_argument(
        "--max-text-tokens",
        type=_positive,
        help="text tokens per item; a longer text is cut, with a warning naming it (default: the preset's)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    existing.add_argument("--overwrite", action="store_true", help="start afresh over the checkpoint in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        trainer = _trainer(args)
    except (AgffError, OSError) as err:
        return print_error(err)
    reports = trainer.replica.is_main  # the other processes of a torchrun train silently
    if reports:
        model = trainer.model
        what = "pretraining the backbone of" if trainer.settings.objective == "lm" else "training"
        print(f"{what} {_described(model.config)} ({_millions(model)}M parameters) on {_where(trainer)}")
    try:
        trainer.run()
    finally:
        trainer.close()
    if reports:
        _report(trainer, started)
    return 0


def _report(trainer: Trainer, started: float) -> None:
    print(f"trained to step {trainer.step} in {time.perf_counter() - started:.0f} s")
    if trainer.settings.eval_pairs and not trainer.settings.data:
        for line in trainer.evaluate().lines():
            print(line)
    print(f"checkpoint: {trainer.out.resolve()}")


def _trainer(args: argparse.Namespace) -> Trainer:
    """Every process checks --out before building its trainer, and rank 0 writes only after the DDP set-up
    that waits for all of them, so no process finds files that another process of the same run wrote."""
    if args.resume:
        return Trainer.resume(args.out, steps=args.steps, threads=args.threads, chunk_size=args.chunk_size)
    _check_out(Path(args.out), args.overwrite)
    names = {f.name for f in fields(TrainSettings)}
    chosen = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return Trainer.create(TrainSettings(**chosen))


def _check_out(out: Path, overwrite: bool) -> None:
    """A fresh run replaces the weights of whatever run is in `out`: never without the user saying so."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; choose a folder")
    if not overwrite and any(out.glob("*")):
        raise InputError(
            f"--out {out} already holds files (an earlier run?); continue that run with --resume, "
            "replace it with --overwrite, or choose another --out"
        )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _where(trainer: Trainer) -> str:
    world = trainer.replica.world_size
    return f"{trainer.device.type} x {world} processes" if world > 1 else str(trainer.device)


def _described(config) -> str:
    """The model being trained: a preset's, or the preset's prompts on a base folder of its family."""
    if config.base_path:
        return f"a {config.preset} AGFF model on the {config.family.label} base {config.base_path}"
    return f"{config.preset} model"


def _millions(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"


if __name__ == "__main__":
    sys.exit(main())
