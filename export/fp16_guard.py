"""Keep the modules whose activations outgrow fp16 in fp32, found by measuring them on calibration inputs.

An fp16 graph is the model cast to half; norms, softmax and L2 normalisation
already run in fp32 inside the modules. What casting cannot see is a single
channel whose activation leaves fp16's range (max 65504): on real Qwen2.5-VL
weights the last vision block's MLP does (TensorRT Edge-LLM keeps that node in
fp32), while random weights never do, so a parity gate on a random model passes
and a real model's fp16 engine returns inf/NaN. The guard measures instead:

1. `activation_ranges` runs the fp32 model on calibration feeds with forward
   hooks on every module and keeps only running maxima of |input| and |output|
   (one scalar per module), never the activations, under `torch.no_grad()`: a
   2B model's stats pass costs no more memory than its inference.
2. `fp32_modules` turns the ranges into the smallest units to keep in fp32: for
   every module whose input or output passes `FP16_SAFE_LIMIT`, the nearest
   enclosing module whose own input and output stay under it (an MLP for an
   outlier channel between its up and down projections). Its boundaries are
   where the casts go, so they must be values fp16 can hold; a Linear alone
   would hand its overflowing output straight back to fp16.
3. `cast_fp16_except` casts the model to half except those modules, which keep
   fp32 weights and get hooks that cast their inputs to fp32 and their outputs
   back to half. The hooks are traced, so `torch.onnx.export(dynamo=True)`
   writes Cast nodes around fp32 MatMuls and a strongly typed TensorRT build runs
   them in fp32.

`find_fp32_modules` is 1 + 2 in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from agff_deploy.errors import ArtifactError

FP16_MAX = 65504.0
# Calibration sees a sample of the inputs a deployment will: an activation that peaks at a quarter of fp16's
# range there has two exponent steps of headroom left for unseen inputs (real outlier channels grow with the
# input, e.g. image content and length). A margin of 4 flags nothing on ordinary weights (their activations
# stay in the tens or hundreds) and everything within a factor of 4 of overflow.
FP16_HEADROOM = 4.0
FP16_SAFE_LIMIT = FP16_MAX / FP16_HEADROOM

_GUARD_MARK = "_agff_fp32_island"


class Fp16RangeError(ArtifactError):
    """The model's activations leave fp16's range where no module short of the whole model can hold them."""


@dataclass(frozen=True)
class ActivationRange:
    """The largest |value| a module received and returned over the calibration feeds (inf if it saw inf/NaN)."""

    input_max: float
    output_max: float

    @property
    def peak(self) -> float:
        return max(self.input_max, self.output_max)

    def fits(self, limit: float) -> bool:
        """Both boundaries within `limit`: the module can sit between fp16 tensors."""
        return self.peak <= limit


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    """Every tensor in a module's arguments or result (tensors, tuples, lists, dicts, ModelOutputs)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _tensor_abs_max(t: torch.Tensor) -> torch.Tensor:
    """max |t| as an fp32 scalar, through min and max: no |t| copy of a large activation is made."""
    lo, hi = torch.aminmax(t.detach())
    return torch.maximum(lo.abs(), hi.abs()).float()


def _abs_max(value: Any) -> torch.Tensor | None:
    """max |x| over the floating tensors in `value` (fp32 scalar; NaN counts as inf), or None if there are none."""
    peaks = [_tensor_abs_max(t) for t in _tensors(value) if t.is_floating_point() and t.numel()]
    if not peaks:
        return None
    peak = torch.stack(peaks).amax()
    return torch.where(torch.isnan(peak), torch.full_like(peak, float("inf")), peak)


class _RangeRecorder:
    """Running maxima of one module's inputs and outputs, kept on the model's device (no sync per call).

    Additive attention masks (keyword arguments named `*mask`) are not data: they hold the dtype's most
    negative value by design and are built in the running dtype, so they are left out of the input range.
    """

    def __init__(self) -> None:
        self.input_max: torch.Tensor | None = None
        self.output_max: torch.Tensor | None = None

    @staticmethod
    def _update(running: torch.Tensor | None, value: Any) -> torch.Tensor | None:
        peak = _abs_max(value)
        if peak is None:
            return running
        return peak if running is None else torch.maximum(running, peak)

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        data = {name: value for name, value in kwargs.items() if not name.endswith("mask")}
        self.input_max = self._update(self._update(self.input_max, args), data)
        self.output_max = self._update(self.output_max, output)

    def result(self) -> ActivationRange:
        def value(t: torch.Tensor | None) -> float:
            return 0.0 if t is None else float(t)

        return ActivationRange(value(self.input_max), value(self.output_max))


Feed = Mapping[str, np.ndarray | torch.Tensor]


def _run_feed(model: nn.Module, feed: Feed) -> None:
    """One forward pass on a feed dict, whichever graph's layout it has.

    Item feeds (pixel_values? / image_grid? / input_ids / attention_mask) run the whole forward; a vision
    encoder's feed (pixel_values / image_grid) runs `image_tokens`; a language encoder's (input_ids /
    attention_mask / image_features / image_grid) runs `encode_tokens`. So the calibration feeds of every graph
    measure the same modules.
    """
    device = next(model.parameters()).device
    tensors = {name: torch.as_tensor(value, device=device) for name, value in feed.items()}
    if "input_ids" not in tensors:
        model.image_tokens(**tensors)
    elif "image_features" in tensors:
        model.encode_tokens(**tensors)
    else:
        model(**tensors)


def activation_ranges(
    model: nn.Module, feeds: Iterable[Feed] | Callable[[nn.Module], None]
) -> dict[str, ActivationRange]:
    """max |input| and |output| of every module the forward passes call, over all `feeds`.

    `feeds` is a list of feed dicts, numpy or torch values keyed as the graphs' inputs (`ItemEncoder.feeds`,
    `export.calibration.calibration_feeds`; see `_run_feed`), or a callable that runs the model itself.
    Modules the forward never calls as modules (ones used only through their submodules or weights) get no
    entry: a hook on them would never fire, so they cannot be an fp32 island either.
    """
    recorders = {name: _RangeRecorder() for name, _ in model.named_modules()}
    handles = [
        module.register_forward_hook(recorders[name].hook, with_kwargs=True) for name, module in model.named_modules()
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if callable(feeds):
                feeds(model)
            else:
                for feed in feeds:
                    _run_feed(model, feed)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {
        name: recorder.result()
        for name, recorder in recorders.items()
        if recorder.input_max is not None or recorder.output_max is not None
    }


def _ancestors(name: str) -> list[str]:
    """`a.b.c` -> [`a.b`, `a`, ``]: the enclosing modules, nearest first (`` is the model itself)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)] + [""]


def _island(name: str, ranges: Mapping[str, ActivationRange], limit: float) -> str:
    """The nearest enclosing called module of `name` whose boundaries fit fp16; the root does not count."""
    for ancestor in _ancestors(name):
        if ancestor == "":
            break
        if ancestor in ranges and ranges[ancestor].fits(limit):
            return ancestor
    raise Fp16RangeError(
        f"{name}: activations reach {ranges[name].peak:.3g}, beyond fp16's safe {limit:.3g}, and no enclosing "
        "module short of the whole model keeps them inside: export fp32 (or int8) instead of fp16"
    )


def _outermost(names: set[str]) -> list[str]:
    """`names` without those nested inside another of them, sorted."""
    return sorted(n for n in names if not any(n.startswith(f"{other}.") for other in names))


def fp32_modules(ranges: Mapping[str, ActivationRange], limit: float = FP16_SAFE_LIMIT) -> list[str]:
    """The smallest modules to keep in fp32 so that no value beyond `limit` is ever held in fp16.

    Every module whose input or output passes `limit` is covered by its nearest enclosing module whose own
    input and output fit (the casts sit at that module's boundary); nested picks collapse to the outermost.
    Raises `Fp16RangeError` when only the whole model would do (e.g. the residual stream itself overflows).
    """
    hot = sorted(name for name, r in ranges.items() if name and not r.fits(limit))
    return _outermost({_island(name, ranges, limit) for name in hot})


def find_fp32_modules(
    model: nn.Module, feeds: Iterable[Feed] | Callable[[nn.Module], None], limit: float = FP16_SAFE_LIMIT
) -> list[str]:
    """Names of the modules of the fp32 `model` that must stay fp32 in its fp16 export, measured on `feeds`."""
    return fp32_modules(activation_ranges(model, feeds), limit)


def _cast(value: Any, source: torch.dtype, target: torch.dtype) -> Any:
    """`value` with its `source`-dtype tensors cast to `target` (nested tuples, lists and dicts rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.to(target) if value.dtype == source else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_cast(v, source, target) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, source, target) for v in value)
    if isinstance(value, dict):
        cast = {k: _cast(v, source, target) for k, v in value.items()}
        if type(value) is dict:
            return cast
        value.update(cast)  # ModelOutput and other dict subclasses: in place, keeping the class
        return value
    return value


def _cast_outside(model: nn.Module, kept: list[nn.Module], dtype: torch.dtype) -> None:
    """Cast the floating parameters and buffers of `model` to `dtype`, except those of the `kept` modules.

    Tensor by tensor rather than `model.half()` and back: a round trip through fp16 would flush the kept
    modules' tiny weights (the down projection that brings an outlier channel back) to zero.
    """
    inside = {id(m) for module in kept for m in module.modules()}
    kept_tensors = {id(t) for module in kept for t in [*module.parameters(), *module.buffers()]}
    for module in model.modules():
        if id(module) in inside:
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point() and id(param) not in kept_tensors:
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and id(buffer) not in kept_tensors:
                setattr(module, name, buffer.to(dtype))


def _keep_fp32(module: nn.Module, dtype: torch.dtype) -> None:
    """Casts at the boundary: `dtype` inputs to fp32 on the way in, fp32 outputs to `dtype` on the way out."""
    if getattr(module, _GUARD_MARK, False):
        return

    def enter(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _cast(args, dtype, torch.float32), _cast(kwargs, dtype, torch.float32)

    def leave(mod: nn.Module, args: tuple, output: Any) -> Any:
        return _cast(output, torch.float32, dtype)

    module.register_forward_pre_hook(enter, with_kwargs=True)
    module.register_forward_hook(leave)
    setattr(module, _GUARD_MARK, True)


def cast_fp16_except(model: nn.Module, keep: Iterable[str], dtype: torch.dtype = torch.float16) -> list[str]:
    """Cast `model` to `dtype` in place except the modules named in `keep`, which run in fp32 between casts.

    `model` comes in fp32. Returns the names kept in fp32 (sorted; a name inside another kept one is dropped,
    since its output cast would put fp16 inside the outer island), for the manifest. The casts are forward
    hooks, so module names and state_dict keys stay the model's own (the exported nodes' name scopes show
    them); the hooks stay with the model, which exists to be exported once.
    """
    modules = dict(model.named_modules())
    missing = sorted(name for name in set(keep) if name not in modules or name == "")
    if missing:
        raise ValueError(f"no such submodule to keep in fp32: {', '.join(map(repr, missing))}")
    names = _outermost(set(keep))
    kept = [modules[name].float() for name in names]
    _cast_outside(model, kept, dtype)
    for module in kept:
        _keep_fp32(module, dtype)
    return names
