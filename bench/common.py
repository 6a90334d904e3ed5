"""What the benchmarks share: timing, random-weight models at a preset, ONNX Runtime sessions."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.inputs import ItemEncoder
from agff_deploy.model import AGFFEmbedder
from agff_deploy.presets import PRESETS, local_tokenizer, preset_config
from agff_deploy.scenes import make_scene
from runtime.onnxruntime_loader import import_onnxruntime

# The built-in presets plus sizes that only benchmarks use: >= 256 image tokens, and a Qwen2-VL-0.5B-like width
# for int8. A table of its own: importing bench/ leaves agff_deploy's PRESETS (and train.run's choices) alone.
BENCH_PRESETS: dict[str, dict[str, Any]] = {
    **PRESETS,
    "demo-448": dict(PRESETS["demo"], agff=dict(PRESETS["demo"]["agff"], image_size=(448, 448))),
    "wide": {
        "text": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 4, "num_attention_heads": 14,
                 "num_key_value_heads": 2, "mrope_section": [8, 12, 12]},
        "vision": {"embed_dim": 640, "depth": 4, "num_heads": 10, "mlp_ratio": 4},
        "agff": {"num_fine": 4, "prompt_length": 1, "image_size": (224, 224), "max_text_tokens": 64},
    },
}  # fmt: skip


def model_for(ckpt: Path | None, preset: str = "demo") -> tuple[AGFFEmbedder, ItemEncoder]:
    """A trained checkpoint when given, else a random-weight model at `preset` (speed does not depend on training)."""
    if ckpt is None:
        return random_model(preset)
    model, tokenizer = load_checkpoint(ckpt)
    return model, item_encoder(model.config, tokenizer)


def random_model(preset: str, seed: int = 0, **overrides: Any) -> tuple[AGFFEmbedder, ItemEncoder]:
    tokenizer = local_tokenizer()
    torch.manual_seed(seed)
    model = AGFFEmbedder(preset_config(preset, tokenizer, BENCH_PRESETS, **overrides)).eval()
    return model, item_encoder(model.config, tokenizer)


def image_feeds(encoder: ItemEncoder, batch: int, first: int = 0) -> dict:
    feeds = encoder.feeds([""] * batch, encoder.render([make_scene(first + i) for i in range(batch)]))
    return {k: feeds[k] for k in ("pixel_values", "image_grid", "input_ids", "attention_mask")}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so drift in machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def ort_session(path: str | Path, threads: int) -> Any:
    """A CPU session whose idle intra-op threads sleep instead of spinning.

    A benchmark holds several sessions and runs them back to back, and each session has its own pool:
    with spinning on, the pools of the sessions just run keep busy-waiting on the cores the next one
    needs. On 2 cores that made every graph 2-4x slower than one thread, by an amount that changed from
    one process to the next (and all the more when anything else ran on the machine).
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_medians(
    paths: dict[str, Path], feeds: dict[str, np.ndarray], threads: int, repeat: int
) -> dict[str, float]:
    """Median seconds per run of each graph on `feeds`, timed interleaved in this process (one draw)."""
    sessions = {name: ort_session(path, threads) for name, path in paths.items()}
    return interleaved_medians({name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}, repeat)


T = TypeVar("T")


def in_fresh_processes(fn: Callable[..., T], *args: Any, processes: int) -> list[T]:
    """`fn(*args)` run once in each of `processes` new processes, one after another.

    How fast a session runs on a small CPU depends on the process it lives in (where its threads land,
    what else ran or runs beside it), so a single process gives one draw of a spread, not a figure.
    `fn` must be importable by name (spawned processes re-import its module; they share nothing else).
    """
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return [pool.apply(fn, args) for _ in range(processes)]


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over processes: the range is what any single run could have printed."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = list(values)
        return cls(statistics.median(values), min(values), max(values))

    def __format__(self, spec: str) -> str:
        return f"{self.median:{spec}} [{self.low:{spec}}..{self.high:{spec}}]"

    def to_json(self) -> dict[str, float]:
        """For json.dumps(..., default=Spread.to_json)."""
        return {k: round(v, 3) for k, v in vars(self).items()}


class OneGraphImageEncoder(torch.nn.Module):
    """pixels + tokens -> `[B, K+1, D]` as ONE graph (vision tower and language model together): how bundles stored
    the image encoder before format 2. Benchmarks time it as one graph and set it against the two-graph pipeline."""

    def __init__(self, model: AGFFEmbedder) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        dtype = next(self.model.parameters()).dtype
        return self.model(input_ids, attention_mask, pixel_values.to(dtype))


class OneGraphTextEncoder(torch.nn.Module):
    """tokens -> `[B, K+1, D]` as one graph without an image-features input (the text encoder before format 2)."""

    def __init__(self, model: AGFFEmbedder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids, attention_mask)
