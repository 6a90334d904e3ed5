"""Checkpoint -> ONNX bundle folder, built in a temporary folder and moved into place only after the gate.

The precisions that pass their bars are moved into place; one that fails is
left out. If fp32 fails, the graphs do not reproduce the model and nothing is.

bundle/
  manifest.json             everything the runtime needs (agff_deploy.manifest)
  tokenizer.json
  gate.npz                  the gate's input sets and PyTorch's outputs on them (export.gate_reference)
  scorer.onnx               fused similarity, fp32, shared by every precision
  fp32/vision_encoder.onnx  fp32/language_encoder.onnx  (+ .onnx.data beside each past the external-data threshold)
  fp16/...  int8/...  int8-dynamic/...

The language model and its embedding table live in the language encoder only,
which serves text and image items alike: each precision stores the model once.
With `keep_fp32=False` (a device bundle) the fp32 graphs are built and gated,
then left out: the gate's record travels instead, so engines and the other
precisions are still held to PyTorch on the device.

Memory at 2B parameters: the PyTorch reference numbers for the gate are
computed first, the model is cast to fp16 in place for the fp16 graphs and
then released, int8 variants are made from the fp32 files, and the gate opens
one ONNX Runtime session at a time. The model is never held twice and never
beside a session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
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
from agff_deploy.atomic_files import writer_running
from agff_deploy.config import source_config_file
from agff_deploy.contract import (
    LANGUAGE_ENCODER,
    PRECISIONS,
    SCORER,
    STORED,
    STORED_ENCODERS,
    TRT_PRECISIONS,
    VISION_ENCODER,
    GraphSpec,
    TensorSpec,
    resolved_stored,
)
from agff_deploy.errors import AgffError, InputError
from agff_deploy.feeds import language_feed, vision_feed
from agff_deploy.inputs import ItemEncoder
from agff_deploy.manifest import (
    BatchRange,
    Dims,
    Fusion,
    GraphEntry,
    LengthRange,
    Manifest,
    ModelDims,
    Parity,
    Source,
    TokenizerFile,
    sha256_file,
    write_manifest,
)
from agff_deploy.model import AGFFEmbedder
from agff_deploy.scenes import make_scene
from agff_deploy.tokenization import TOKENIZER_FILE
from agff_deploy.weights import weights_sha256

from .calibration import CALIBRATION_SEED, calibration_feeds
from .check import GATE_IMAGES, GateReport, check_gate_images, gate_bundle, pytorch_reference
from .fp16_guard import cast_fp16_except, find_fp32_modules
from .gate_reference import save_gate_reference
from .graphs import (
    EXTERNAL_DATA_BYTES,
    LanguageEncoderGraph,
    ScorerGraph,
    VisionEncoderGraph,
    export_graph,
    external_data_entries,
)
from .int4_sensitivity import int4_kept_in_float
from .precision import (
    INT4_BLOCK_SIZES,
    SENSITIVITY_ITEMS,
    int4_counts,
    quantize_dynamic_int8,
    quantize_int4,
    quantize_qdq,
    sample_items,
)
from .targets import Target

QUANTIZED = ("int8", "int8-dynamic", "int4")  # made from the fp32 graphs after the model is released


class DiskFull(AgffError, OSError):
    """The bundle does not fit where it is written; nothing partial is left."""


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    batch: tuple[int, int, int] = (1, 8, 64)
    opset: int = 18
    calib_dir: str | None = None
    calib_samples: int = 128
    agreement_pairs: int | None = None  # None: as many as fit the gate's time budget
    gate_images: tuple[int, int] = GATE_IMAGES
    external_data_bytes: int = EXTERNAL_DATA_BYTES
    keep_fp32: bool = True  # False: a device bundle (fp32 gated, then left out)
    fp16_guard_samples: int = 16  # calibration images and texts whose activation ranges the fp16 guard measures
    int4_block_size: int = 128  # weight rows per int4 scale (TensorRT documents 64 and 128)
    int4_float_budget: float = 0.0  # share of the int4 MatMul weights kept in float, by sensitivity

    def validate(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi or hi < 2:
            raise InputError(f"--batch {lo} {opt} {hi}: need 1 <= MIN <= OPT <= MAX and MAX >= 2")
        if not 17 <= self.opset <= 20:
            raise InputError(
                f"--opset {self.opset}: choose 17..20 (LayerNormalization needs 17; TensorRT 10 reads up to 20)"
            )
        check_gate_images(self.gate_images)
        if self.int4_block_size not in INT4_BLOCK_SIZES:
            raise InputError(f"--int4-block-size {self.int4_block_size}: choose one of {INT4_BLOCK_SIZES}")
        if not 0 <= self.int4_float_budget < 1:
            raise InputError(f"--int4-float-budget {self.int4_float_budget:g}: give a share from 0 up to (not) 1")
        if not self.keep_fp32 and self.precisions == ("fp32",):
            raise InputError("--without-fp32 needs another precision to keep: add --precision fp16, int8, ...")


class BundleBuilder:
    """Writes one bundle for one model; `log` receives progress lines.

    `build` consumes the model: its weights are cast to fp16 in place for the
    fp16 graphs and then released (moved to the meta device), so a 2B model is
    never held twice. Load it again to use it afterwards.
    """

    def __init__(self, model: AGFFEmbedder, encoder: ItemEncoder, source: Path, options: ExportOptions, log=print):
        self.model = model.eval()
        self.encoder = encoder
        self.source = source
        self.options = options
        self.log = log
        self.kept_in_float: dict[str, tuple[str, ...]] = {}
        self.specs = resolved_stored(model.config.sizes())
        self.fusion = Fusion(
            t_in=model.fusion.t_in,
            t_f=float(model.fusion.t_f.detach()),
            pattern_bias=tuple(float(b) for b in model.fusion.pattern_bias.detach()),
            temperature=float(model.temperature.detach()),
        )

    def _dims(self) -> dict[str, dict[str, tuple[int, int]]]:
        lo, _, hi = self.options.batch
        return {
            VISION_ENCODER.name: {"batch": (lo, hi), "patches": (4, self._max_patches())},
            LANGUAGE_ENCODER.name: {
                "batch": (lo, hi),
                "length": self._length_range(),
                "image_tokens": (1, self.model.config.num_image_tokens),
            },
            SCORER.name: {"queries": (1, 1 << 16), "candidates": (1, 1 << 20)},
        }

    def _max_patches(self) -> int:
        return self.model.config.num_image_tokens * self.model.config.merge_size**2

    def _length_range(self) -> tuple[int, int]:
        """The language encoder's token lengths: text items' and image items' together."""
        image, text = (self.encoder.formatter.length_range(with_image=w) for w in (True, False))
        return max(2, min(image[0], text[0])), max(image[1], text[1])

    def _examples(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """What each graph is traced with, in its contract's input order."""
        size = self.encoder.scene_size
        image = self.encoder.feeds(["", "what is this?"], [np.zeros((size, size, 3), np.uint8)] * 2)
        tokens = self.model.config.num_image_tokens
        vision = {
            t.name: _random(t, {"batch": 2, "image_tokens": tokens}) for t in self.specs[VISION_ENCODER.name].outputs
        }
        scorer = self.specs[SCORER.name]
        feeds = {
            VISION_ENCODER.name: vision_feed(image),
            LANGUAGE_ENCODER.name: language_feed(image, self.specs[LANGUAGE_ENCODER.name], vision),
            SCORER.name: {t.name: _random(t, {"queries": 2, "candidates": 3}) for t in scorer.inputs},
        }
        return {name: tuple(torch.from_numpy(feeds[name][n]) for n in self.specs[name].input_names) for name in STORED}

    def _export(self, module: torch.nn.Module, name: str, path: Path) -> Path:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            export_graph(
                module,
                self.specs[name],
                self._examples()[name],
                path,
                self.options.opset,
                self._dims()[name],
                self.options.external_data_bytes,
            )
        self.log(f"  {self._label(path)}: {time.perf_counter() - started:.1f} s")
        return path

    @staticmethod
    def _label(path: Path) -> str:
        """A graph's path inside the bundle, never the temporary folder's name."""
        return path.name if path.parent.name.startswith(".") else f"{path.parent.name}/{path.name}"

    def write_graphs(self, folder: Path) -> dict[str, dict[str, Path]]:
        """Scorer and fp32 graphs, then fp16 (model cast in place, modules that would overflow kept fp32), then the
        model is released for int8."""
        scorer = self._export(ScorerGraph(self.model), SCORER.name, folder / "scorer.onnx")
        files = {"fp32": self._encoders(folder / "fp32")}
        if "fp16" in self.options.precisions:
            self.kept_in_float["fp16"] = tuple(cast_fp16_except(self.model, self._overflowing_modules()))
            if self.kept_in_float["fp16"]:
                self.log(f"  fp16 overflow guard: {', '.join(self.kept_in_float['fp16'])} kept in fp32")
            files["fp16"] = self._encoders(folder / "fp16")
        self.model.to("meta")
        for precision in self.options.precisions:
            if precision in QUANTIZED:
                (folder / precision).mkdir()
                files[precision] = self.quantized(precision, files["fp32"])
        for graphs in files.values():
            graphs[SCORER.name] = scorer
        return {p: files[p] for p in self.options.precisions}

    def _overflowing_modules(self) -> list[str]:
        """Modules whose activations leave fp16's range on calibration items (images with instructions, texts)."""
        count = self.options.fp16_guard_samples
        scenes = [make_scene(CALIBRATION_SEED + i) for i in range(count)]
        feeds = [self.encoder.feeds([s.caption() for s in scenes[i : i + 4]]) for i in range(0, count, 4)]
        images = [self.encoder.render(scenes[i : i + 4], mixed_aspects=True) for i in range(0, count, 4)]
        feeds += [self.encoder.feeds([""] * len(batch), batch) for batch in images]
        return find_fp32_modules(self.model, feeds)

    def _encoders(self, folder: Path) -> dict[str, Path]:
        folder.mkdir()
        return {
            name: self._export(graph(self.model), name, folder / f"{name}.onnx")
            for name, graph in (
                (VISION_ENCODER.name, VisionEncoderGraph),
                (LANGUAGE_ENCODER.name, LanguageEncoderGraph),
            )
        }

    def quantized(self, precision: str, fp32: dict[str, Path]) -> dict[str, Path]:
        """Both encoders at an int8 or int4 precision, made from the fp32 files; Q/DQ calibrates the language
        encoder on text items and on image items whose features the fp32 vision graph computes."""
        out = {}
        for name in STORED_ENCODERS:
            path = fp32[name].parent.parent / precision / f"{name}.onnx"
            started = time.perf_counter()
            if precision == "int8":
                kept = quantize_qdq(fp32[name], path, self._calibration(name, fp32, self.options.calib_samples))
                self._keep_in_float("int8", name, kept)
                self.log(f"  {self._label(path)}: {len(kept)} weight MatMuls kept in float by sensitivity")
            elif precision == "int4":
                block, budget = self.options.int4_block_size, self.options.int4_float_budget
                # the sensitivity reads SENSITIVITY_ITEMS items: calibrating more would only be thrown away
                items = sample_items(self._calibration(name, fp32, SENSITIVITY_ITEMS)) if budget else []
                kept = int4_kept_in_float(fp32[name], items, block, budget)
                quantize_int4(fp32[name], path, block, kept)
                self._keep_in_float("int4", name, kept)
                counts = int4_counts(path)
                self.log(f"  {self._label(path)}: {counts.quantized} weight MatMuls int4, {counts.kept} kept in float")
            else:
                quantize_dynamic_int8(fp32[name], path)
            self.log(f"  {self._label(path)}: {time.perf_counter() - started:.1f} s")
            out[name] = path
        return out

    def _calibration(self, name: str, fp32: dict[str, Path], samples: int) -> list[dict[str, np.ndarray]]:
        """`samples` calibration items of encoder `name`; the language encoder's image items take the fp32 vision
        graph's features."""
        vision = fp32[VISION_ENCODER.name]
        return calibration_feeds(self.encoder, self.specs[name], self.options.calib_dir, samples, vision)

    def _keep_in_float(self, precision: str, graph: str, nodes: list[str]) -> None:
        """Record the MatMuls of `graph` that `precision` left in float by sensitivity (the manifest's record)."""
        self.kept_in_float[precision] = (*self.kept_in_float.get(precision, ()), *(f"{graph}/{n}" for n in nodes))

    def manifest(self, folder: Path, files: dict[str, dict[str, Path]]) -> Manifest:
        cfg = self.model.config
        sizes = cfg.sizes()
        lo, opt, hi = self.options.batch
        image_length, text_length = (self.encoder.formatter.length_range(with_image=w) for w in (True, False))
        return Manifest(
            created_by=f"agff-deploy {__version__}",
            model=ModelDims(
                sizes["prompts"],
                sizes["hidden"],
                sizes["width"],
                sizes["deepstack"],
                cfg.family.model_type,
                cfg.matryoshka,
            ),
            image=cfg.image_format(),
            tokenizer=TokenizerFile(
                TOKENIZER_FILE,
                sha256_file(folder / TOKENIZER_FILE),
                cfg.max_text_tokens,
                cfg.chat_head,
                cfg.chat_tail,
                cfg.empty_text,
                cfg.task_slot,
            ),
            fusion=self.fusion,
            dims=Dims(
                BatchRange(lo, opt, hi),
                LengthRange(*image_length),
                LengthRange(max(2, text_length[0]), text_length[1]),
            ),
            graphs={
                precision: {
                    name: self._graph_entry(folder, path, precision, self.specs[name]) for name, path in graphs.items()
                }
                for precision, graphs in files.items()
            },
            source=Source(
                checkpoint=str(self.source.resolve()),
                weights_sha256=weights_sha256(self.source),
                config_sha256=sha256_file(source_config_file(self.source)),
            ),
        )

    @staticmethod
    def _graph_entry(folder: Path, path: Path, precision: str, spec: GraphSpec) -> GraphEntry:
        on_tensorrt = spec.name == SCORER.name or precision in TRT_PRECISIONS
        return GraphEntry(
            file=str(path.relative_to(folder)),
            sha256=sha256_file(path),
            external_data=external_data_entries(folder, path),
            inputs=spec.inputs,
            outputs=spec.outputs,
            backends=("onnxruntime", "tensorrt") if on_tensorrt else ("onnxruntime",),
        )

    def build(self, out: Path, target: Target) -> GateReport:
        """Export, gate, and only then move the precisions that passed to `out` (replacing an older bundle).

        The report covers every precision built; `report.trusted` says whether anything was moved.
        """
        self.options.validate()
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        _remove_leftovers(out)
        shutil.rmtree(tmp, ignore_errors=True)
        if "int8" in self.options.precisions:
            _require_calibration_memory(
                self.weight_bytes(), streamed=self.weight_bytes() > self.options.external_data_bytes
            )
        needed = self.disk_bytes()
        out.parent.mkdir(parents=True, exist_ok=True)
        _require_free_space(out.parent, needed)
        tmp.mkdir()
        try:
            shutil.copyfile(self.source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            self.log("PyTorch reference for the parity gate ...")
            reference, input_sets = pytorch_reference(
                self.model,
                self.encoder,
                self.fusion,
                self.options.gate_images,
                self.options.agreement_pairs,
                self.options.precisions,
            )
            gate = save_gate_reference(tmp, reference, input_sets)
            files = self.write_graphs(tmp)
            manifest = dataclasses.replace(self.manifest(tmp, files), gate=gate, kept_in_float=self.kept_in_float)
            write_manifest(tmp, manifest)
            self.log("parity gate ...")
            report = gate_bundle(tmp, reference, input_sets, target)
            if report.trusted:
                manifest = _leave_out_failed(tmp, manifest, report)
                if not self.options.keep_fp32 and len(manifest.graphs) > 1:
                    _leave_out_fp32(tmp, manifest)
                elif not self.options.keep_fp32:
                    self.log("no other precision passed the gate: the fp32 graphs are kept")
                _replace_folder(tmp, out)
            return report
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFull(
                    errno.ENOSPC,
                    f"disk full while writing {out}: building this bundle needs about "
                    f"{needed / 2**30:.1f} GiB; free space there or write it elsewhere with -o",
                ) from err
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def weight_bytes(self) -> int:
        """The model's weights in fp32: what the fp32 vision and language encoder graphs hold together."""
        return sum(p.numel() * 4 for p in self.model.parameters())

    def disk_bytes(self) -> int:
        """Disk a build needs at its peak: the fp32 encoders hold one copy of the weights, fp16 half of one,
        each int8 kind a quarter, and int8 calibration an augmented fp32 copy of one graph at a time."""
        weights = self.weight_bytes()
        share = {"fp32": 1.0, "fp16": 0.5, "int8": 1.0, "int8-dynamic": 0.25, "int4": 0.15}
        total = sum(share[p] for p in self.options.precisions)
        return int(weights * total) + (64 << 20)


def _random(tensor: TensorSpec, sizes: dict[str, int]) -> np.ndarray:
    """A float32 array of the tensor's shape, its dynamic dims at `sizes`: an example to trace with."""
    return np.random.default_rng(0).standard_normal(tensor.resolve(sizes).shape).astype(np.float32)


def _require_calibration_memory(weight_bytes: int, streamed: bool) -> None:
    """Refuse int8 Q/DQ up front where its calibration cannot fit, not after the other precisions.

    ONNX Runtime's quantizer holds a graph about three times over (measured here: 3.4x for
    dynamic quantisation; static quantisation of a 2B image encoder was killed at 24 GB); a
    graph with external weights is calibrated by `stream_qdq` in one session, which holds
    the weights once plus activations (counted as a quarter more).
    """
    needed = int(weight_bytes * (1.25 if streamed else 3))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > total:
        raise InputError(
            f"--precision int8: calibrating the {weight_bytes / 2**30:.1f} GiB model needs about "
            f"{needed / 2**30:.0f} GiB and this machine has {total / 2**30:.0f} GiB: export int8 "
            "on a machine with more memory, or choose fp16 (TensorRT) or int8-dynamic (ONNX Runtime on CPU) here"
        )


def _require_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFull(
            errno.ENOSPC,
            f"{folder} has {free / 2**30:.1f} GiB free; building this bundle needs about "
            f"{needed / 2**30:.1f} GiB; free space there or write it elsewhere with -o",
        )


def _leave_out_failed(folder: Path, manifest: Manifest, report: GateReport) -> Manifest:
    """Drop the precisions that missed their bars; the manifest lists the rest and says why the others are gone."""
    failed = report.failed_precisions()
    for precision in failed:
        shutil.rmtree(folder / precision)
    kept = report.without(failed)
    parity = Parity(kept.passed, tuple(kept.rows), {p: report.failures(p) for p in failed})
    graphs = {p: g for p, g in manifest.graphs.items() if p not in failed}
    manifest = dataclasses.replace(manifest, graphs=graphs, parity=parity)
    write_manifest(folder, manifest)
    return manifest


def _leave_out_fp32(folder: Path, manifest: Manifest) -> None:
    """A device bundle: the fp32 graphs passed the gate and go; their parity rows and the gate record stay."""
    shutil.rmtree(folder / "fp32")
    graphs = {p: g for p, g in manifest.graphs.items() if p != "fp32"}
    write_manifest(folder, dataclasses.replace(manifest, graphs=graphs))


def _remove_leftovers(out: Path) -> None:
    """Temporary and replaced bundles of exports that were killed: nothing else would ever free their disk.

    A folder whose process still runs belongs to a concurrent export to the same path and is left alone.
    """
    for path in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        stem, _, pid = path.name.rpartition("-")
        ours = stem in (f".{out.name}.tmp", f".{out.name}.old") and pid.isdigit()
        if ours and not writer_running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _replace_folder(src: Path, dst: Path) -> None:
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def parse_precisions(values: Sequence[str]) -> tuple[str, ...]:
    unknown = [v for v in values if v not in PRECISIONS]
    if unknown:
        raise InputError(f"--precision {' '.join(unknown)}: choose from {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(["fp32", *values]))
