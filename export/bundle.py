"""Checkpoint -> ONNX bundle folder, built in a temporary folder and moved into place only after the gate passes.

bundle/
  manifest.json           everything the runtime needs (agff_deploy.manifest)
  tokenizer.json
  scorer.onnx             fused similarity, fp32, shared by every precision
  fp32/image_encoder.onnx fp32/text_encoder.onnx
  fp16/...  int8/...  int8-dynamic/...
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agff_deploy import __version__
from agff_deploy.checkpoint import WEIGHTS_FILE
from agff_deploy.config import CONFIG_FILE
from agff_deploy.inputs import ItemEncoder
from agff_deploy.manifest import FORMAT, FORMAT_VERSION, TRT_PRECISIONS, sha256_file, write_manifest
from agff_deploy.model import AGFFEmbedder
from agff_deploy.preprocessing import ImagePreprocessor
from agff_deploy.similarity import PATTERNS
from agff_deploy.tokenization import IMAGE_PLACEHOLDER, TOKENIZER_FILE, USER_HEAD, USER_TAIL

from .calibration import calibration_feeds
from .check import GateReport, report_dict, run_gate
from .graphs import SPECS, ImageEncoderGraph, ScorerGraph, TextEncoderGraph, export_graph
from .precision import half_model, quantize_dynamic_int8, quantize_qdq
from .targets import Target

ENCODERS = ("image_encoder", "text_encoder")


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    batch: tuple[int, int, int] = (1, 8, 64)
    opset: int = 18
    calib_dir: str | None = None
    agreement_pairs: int = 256

    def validate(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi or hi < 2:
            raise ValueError(f"--batch {lo} {opt} {hi}: need 1 <= MIN <= OPT <= MAX and MAX >= 2")
        if not 17 <= self.opset <= 20:
            raise ValueError(
                f"--opset {self.opset}: choose 17..20 (LayerNormalization needs 17; TensorRT 10 reads up to 20)"
            )


class BundleBuilder:
    """Writes one bundle for one model; `log` receives progress lines."""

    def __init__(self, model: AGFFEmbedder, encoder: ItemEncoder, source: Path, options: ExportOptions, log=print):
        self.model = model.eval()
        self.encoder = encoder
        self.source = source
        self.options = options
        self.log = log

    def _dims(self) -> dict[str, dict[str, tuple[int, int]]]:
        lo, _, hi = self.options.batch
        image_len = self.encoder.formatter.length_range(with_image=True)
        text_len = self.encoder.formatter.length_range(with_image=False)
        return {
            "image_encoder": {"batch": (lo, hi), "length": image_len},
            "text_encoder": {"batch": (lo, hi), "length": (max(2, text_len[0]), text_len[1])},
            "scorer": {"queries": (1, 1 << 16), "candidates": (1, 1 << 20)},
        }

    def _examples(self) -> dict[str, tuple[torch.Tensor, ...]]:
        size = self.encoder.preprocessor.height
        image = self.encoder.inputs(["", "what is this?"], [np.zeros((size, size, 3), np.uint8)] * 2)
        text = self.encoder.inputs(["a red circle", "two small blue filled squares at the left"])
        k, d = self.model.config.num_prompts, self.model.config.hidden_size
        return {
            "image_encoder": (image.pixel_values, image.input_ids, image.attention_mask),
            "text_encoder": (text.input_ids, text.attention_mask),
            "scorer": (torch.randn(2, k, d), torch.randn(3, k, d)),
        }

    def _export(self, module: torch.nn.Module, name: str, path: Path) -> Path:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            export_graph(module, name, self._examples()[name], path, self.options.opset, self._dims()[name])
        self.log(f"  {path.parent.name}/{path.name}: {time.perf_counter() - started:.1f} s")
        return path

    def write_graphs(self, folder: Path) -> dict[str, dict[str, Path]]:
        files: dict[str, dict[str, Path]] = {}
        scorer = self._export(ScorerGraph(self.model), "scorer", folder / "scorer.onnx")
        fp32 = folder / "fp32"
        fp32.mkdir()
        files["fp32"] = {
            "image_encoder": self._export(ImageEncoderGraph(self.model), "image_encoder", fp32 / "image_encoder.onnx"),
            "text_encoder": self._export(TextEncoderGraph(self.model), "text_encoder", fp32 / "text_encoder.onnx"),
        }
        for precision in self.options.precisions:
            if precision == "fp32":
                continue
            (folder / precision).mkdir()
            files[precision] = {name: self._variant(precision, name, files["fp32"][name], folder) for name in ENCODERS}
        for graphs in files.values():
            graphs["scorer"] = scorer
        return files

    def _variant(self, precision: str, name: str, fp32_path: Path, folder: Path) -> Path:
        path = folder / precision / f"{name}.onnx"
        if precision == "fp16":
            half = half_model(self.model)
            module = ImageEncoderGraph(half) if name == "image_encoder" else TextEncoderGraph(half)
            return self._export(module, name, path)
        started = time.perf_counter()
        if precision == "int8":
            quantize_qdq(fp32_path, path, calibration_feeds(self.encoder, name, self.options.calib_dir))
        elif precision == "int8-dynamic":
            quantize_dynamic_int8(fp32_path, path)
        else:
            raise ValueError(f"unknown precision {precision!r}")
        self.log(f"  {precision}/{path.name}: {time.perf_counter() - started:.1f} s")
        return path

    def manifest(self, folder: Path, files: dict[str, dict[str, Path]]) -> dict:
        cfg = self.model.config
        fusion = self.model.fusion
        pre: ImagePreprocessor = self.encoder.preprocessor
        formatter = self.encoder.formatter
        lo, opt, hi = self.options.batch
        dims = self._dims()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"agff-deploy {__version__}",
            "model": {
                "architecture": cfg.base.get("model_type", "qwen2_vl"),
                "preset": cfg.preset,
                "num_fine": cfg.num_fine,
                "num_prompts": cfg.num_prompts,
                "prompt_length": cfg.prompt_length,
                "hidden_size": cfg.hidden_size,
            },
            "image": {
                "size": list(cfg.image_size),
                "layout": "NCHW",
                "dtype": "float32",
                "rescale": 1 / 255,
                "mean": list(pre.mean),
                "std": list(pre.std),
                "resample": "bicubic",
                "num_image_tokens": cfg.num_image_tokens,
            },
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "sha256": sha256_file(folder / TOKENIZER_FILE),
                "max_text_tokens": cfg.max_text_tokens,
                "pad_id": formatter.pad_id,
                "image_token_id": formatter.image_id,
                "chat": {"user_head": USER_HEAD, "user_tail": USER_TAIL, "image_placeholder": IMAGE_PLACEHOLDER},
            },
            "fusion": {
                "patterns": list(PATTERNS),
                "t_in": fusion.t_in,
                "t_f": float(fusion.t_f.detach()),
                "pattern_bias": [float(b) for b in fusion.pattern_bias.detach()],
                "temperature": float(self.model.temperature.detach()),
            },
            "opset": self.options.opset,
            "dims": {
                "batch": {"min": lo, "opt": opt, "max": hi},
                "image_length": dict(zip(("min", "max"), dims["image_encoder"]["length"], strict=True)),
                "text_length": dict(zip(("min", "max"), dims["text_encoder"]["length"], strict=True)),
            },
            "graphs": {
                precision: {name: self._graph_entry(folder, name, path, precision) for name, path in graphs.items()}
                for precision, graphs in files.items()
            },
            "source": {
                "checkpoint": str(self.source.resolve()),
                "weights_sha256": sha256_file(self.source / WEIGHTS_FILE),
                "config_sha256": sha256_file(self.source / CONFIG_FILE),
            },
        }

    def _graph_entry(self, folder: Path, name: str, path: Path, precision: str) -> dict:
        spec = SPECS[name]
        h, w = self.model.config.image_size
        k, d = self.model.config.num_prompts, self.model.config.hidden_size
        shapes = {
            "pixel_values": ("float32", ["batch", 3, h, w]),
            "input_ids": ("int64", ["batch", "length"]),
            "attention_mask": ("int64", ["batch", "length"]),
            "embeddings": ("float32", ["batch", k, d]),
            "queries": ("float32", ["queries", k, d]),
            "candidates": ("float32", ["candidates", k, d]),
            "scores": ("float32", ["queries", "candidates"]),
        }
        describe = lambda names: [{"name": n, "dtype": shapes[n][0], "shape": shapes[n][1]} for n in names]  # noqa: E731
        trt = name == "scorer" or precision in TRT_PRECISIONS
        return {
            "file": str(path.relative_to(folder)),
            "sha256": sha256_file(path),
            "inputs": describe(spec.inputs),
            "outputs": describe(spec.outputs),
            "backends": ["onnxruntime", "tensorrt"] if trt else ["onnxruntime"],
        }

    def build(self, out: Path, target: Target) -> GateReport:
        """Export, gate, and only then move the bundle to `out` (replacing an older one)."""
        self.options.validate()
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            shutil.copyfile(self.source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            files = self.write_graphs(tmp)
            manifest = self.manifest(tmp, files)
            write_manifest(tmp, manifest)
            self.log("parity gate ...")
            report = run_gate(tmp, self.model, self.encoder, target, self.options.agreement_pairs)
            if report.passed:
                write_manifest(tmp, dict(manifest, parity=report_dict(report)))
                _replace_folder(tmp, out)
            return report
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(src: Path, dst: Path) -> None:
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def parse_precisions(values: Sequence[str]) -> tuple[str, ...]:
    from agff_deploy.manifest import PRECISIONS

    unknown = [v for v in values if v not in PRECISIONS]
    if unknown:
        raise ValueError(f"--precision {' '.join(unknown)}: choose from {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(["fp32", *values]))
