"""Real-size training on a CUDA GPU: a Qwen2-VL-2B-architecture base, LoRA, bf16 autocast, checkpointing on/off.

    python -m bench.gpu_scale [--batch 8] [--steps 4] [--image-size 448]

Writes a random-initialised full-size base to a temporary folder, then trains AGFF-Embed from it through
the trainer users run (`train.run --base`), once with gradient checkpointing and once without, and
prints seconds per step and peak CUDA memory side by side. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from agff_deploy.base import write_base
from agff_deploy.provenance import provenance
from train.trainer import Trainer, TrainSettings


def measure(base: Path, out: Path, checkpointing: bool, args: argparse.Namespace) -> dict:
    settings = TrainSettings(
        out=str(out),
        base=str(base),
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-4,
        warmup=1,
        lora_rank=args.lora_rank,
        gradient_checkpointing=checkpointing,
        image_size=args.image_size,
        eval_pairs=0,
    )
    trainer = Trainer.create(settings)
    torch.cuda.reset_peak_memory_stats()
    trainer.train_step()  # first step: kernels, autotuning and allocator warm-up, not timing
    torch.cuda.synchronize()
    started = time.perf_counter()
    losses = [trainer.train_step() for _ in range(args.steps - 1)]
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / (args.steps - 1)
    result = {
        "gradient_checkpointing": checkpointing,
        "seconds_per_step": round(seconds, 3),
        "pairs_per_s": round(args.batch / seconds, 1),
        "peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": [round(x, 4) for x in losses],
    }
    del trainer
    torch.cuda.empty_cache()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--lora-rank", type=int, default=16)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_scale needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        base = write_base("qwen2-vl-2b", Path(tmp) / "base")
        print(f"base written in {time.perf_counter() - started:.0f} s on {torch.cuda.get_device_name()}")
        rows = [measure(base, Path(tmp) / f"run-{on}", on, args) for on in (True, False)]
    for r in rows:
        print(
            f"checkpointing {'on ' if r['gradient_checkpointing'] else 'off'}: {r['seconds_per_step']:.2f} s/step "
            f"({r['pairs_per_s']} pairs/s), peak CUDA memory {r['peak_cuda_gib']:.1f} GiB"
        )
    on, off = rows
    print(f"checkpointing: {on['peak_cuda_gib'] / off['peak_cuda_gib']:.2f}x the memory, "
          f"{on['seconds_per_step'] / off['seconds_per_step']:.2f}x the time")  # fmt: skip
    print(
        json.dumps(
            {
                "bench": "gpu_scale",
                "batch": args.batch,
                "image_size": args.image_size,
                "runs": rows,
                **provenance("bench.gpu_scale", args),
            }
        )
    )


if __name__ == "__main__":
    main()
