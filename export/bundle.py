"""Checkpoint -> ONNX bundle folder, built in a temporary folder and moved into place only after the gate.

The precisions that pass their bars are moved into place; one that fails is
left out. If fp32 fails, the graphs do not reproduce the model and nothing is.

bundle/
  manifest.json           everything the runtime needs (agff_deploy.manifest)
  tokenizer.json
  scorer.onnx             fused similarity, fp32, shared by every precision
  fp32/image_encoder.onnx fp32/text_encoder.onnx   (+ .onnx.data beside each past the external-data threshold)
  fp16/...  int8/...  int8-dynamic/...

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
from agff_deploy.config import CONFIG_FILE
from agff_deploy.contract import (
    CANDIDATES,
    ENCODERS,
    IMAGE_ENCODER,
    PRECISIONS,
    QUERIES,
    SCORER,
    TEXT_ENCODER,
    TRT_PRECISIONS,
    GraphSpec,
    model_sizes,
    resolved_graphs,
)
from agff_deploy.errors import AgffError, InputError
from agff_deploy.inputs import ItemEncoder
from agff_deploy.manifest import (
    BatchRange,
    Dims,
    Fusion,
    GraphEntry,
    ImageFormat,
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
from agff_deploy.tokenization import TOKENIZER_FILE
from agff_deploy.weights import weights_sha256

from .calibration import calibration_feeds
from .check import GATE_IMAGES, GateReport, check_gate_images, gate_bundle, pytorch_reference
from .graphs import (
    EXTERNAL_DATA_BYTES,
    ImageEncoderGraph,
    ScorerGraph,
    TextEncoderGraph,
    export_graph,
    external_data_entries,
)
from .precision import quantize_dynamic_int8, quantize_qdq
from .targets import Target


class DiskFull(AgffError, OSError):
    """The bundle does not fit where it is written; nothing partial is left."""


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    batch: tuple[int, int, int] = (1, 8, 64)
    opset: int = 18
    calib_dir: str | None = None
    calib_samples: int = 128
    agreement_pairs: int = 256
    gate_images: tuple[int, int] = GATE_IMAGES
    external_data_bytes: int = EXTERNAL_DATA_BYTES

    def validate(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi or hi < 2:
            raise InputError(f"--batch {lo} {opt} {hi}: need 1 <= MIN <= OPT <= MAX and MAX >= 2")
        if not 17 <= self.opset <= 20:
            raise InputError(
                f"--opset {self.opset}: choose 17..20 (LayerNormalization needs 17; TensorRT 10 reads up to 20)"
            )
        check_gate_images(self.gate_images)


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
        self.fusion = Fusion(
            t_in=model.fusion.t_in,
            t_f=float(model.fusion.t_f.detach()),
            pattern_bias=tuple(float(b) for b in model.fusion.pattern_bias.detach()),
            temperature=float(model.temperature.detach()),
        )

    def _dims(self) -> dict[str, dict[str, tuple[int, int]]]:
        lo, _, hi = self.options.batch
        image_len = self.encoder.formatter.length_range(with_image=True)
        text_len = self.encoder.formatter.length_range(with_image=False)
        return {
            IMAGE_ENCODER.name: {"batch": (lo, hi), "length": image_len},
            TEXT_ENCODER.name: {"batch": (lo, hi), "length": (max(2, text_len[0]), text_len[1])},
            SCORER.name: {"queries": (1, 1 << 16), "candidates": (1, 1 << 20)},
        }

    def _examples(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """What each graph is traced with, in its contract's input order."""
        size = self.encoder.preprocessor.height
        image = self.encoder.feeds(["", "what is this?"], [np.zeros((size, size, 3), np.uint8)] * 2)
        text = self.encoder.feeds(["a red circle", "two small blue filled squares at the left"])
        k, d = self.model.config.num_prompts, self.model.config.hidden_size
        feeds = {
            IMAGE_ENCODER: {n: torch.from_numpy(a) for n, a in image.items()},
            TEXT_ENCODER: {n: torch.from_numpy(a) for n, a in text.items()},
            SCORER: {QUERIES.name: torch.randn(2, k, d), CANDIDATES.name: torch.randn(3, k, d)},
        }
        return {spec.name: tuple(feed[n] for n in spec.input_names) for spec, feed in feeds.items()}

    def _export(self, module: torch.nn.Module, name: str, path: Path) -> Path:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            export_graph(
                module,
                name,
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
        """Scorer and fp32 graphs, then fp16 (model cast in place), then the model is released for int8."""
        scorer = self._export(ScorerGraph(self.model), SCORER.name, folder / "scorer.onnx")
        files = {"fp32": self._encoders(folder / "fp32")}
        if "fp16" in self.options.precisions:
            self.model.half()
            files["fp16"] = self._encoders(folder / "fp16")
        self.model.to("meta")
        for precision in self.options.precisions:
            if precision.startswith("int8"):
                (folder / precision).mkdir()
                files[precision] = {name: self._quantized(precision, name, files["fp32"][name]) for name in ENCODERS}
        for graphs in files.values():
            graphs[SCORER.name] = scorer
        return {p: files[p] for p in self.options.precisions}

    def _encoders(self, folder: Path) -> dict[str, Path]:
        folder.mkdir()
        return {
            name: self._export(graph(self.model), name, folder / f"{name}.onnx")
            for name, graph in ((IMAGE_ENCODER.name, ImageEncoderGraph), (TEXT_ENCODER.name, TextEncoderGraph))
        }

    def _quantized(self, precision: str, name: str, fp32_path: Path) -> Path:
        path = fp32_path.parent.parent / precision / f"{name}.onnx"
        started = time.perf_counter()
        if precision == "int8":
            quantize_qdq(
                fp32_path,
                path,
                calibration_feeds(self.encoder, name, self.options.calib_dir, self.options.calib_samples),
            )
        else:
            quantize_dynamic_int8(fp32_path, path)
        self.log(f"  {self._label(path)}: {time.perf_counter() - started:.1f} s")
        return path

    def manifest(self, folder: Path, files: dict[str, dict[str, Path]]) -> Manifest:
        cfg = self.model.config
        pre = self.encoder.preprocessor
        lo, opt, hi = self.options.batch
        dims = self._dims()
        specs = resolved_graphs(model_sizes(cfg.image_size, cfg.num_prompts, cfg.hidden_size))
        return Manifest(
            created_by=f"agff-deploy {__version__}",
            model=ModelDims(cfg.num_prompts, cfg.hidden_size),
            image=ImageFormat(tuple(cfg.image_size), tuple(pre.mean), tuple(pre.std), cfg.num_image_tokens),
            tokenizer=TokenizerFile(TOKENIZER_FILE, sha256_file(folder / TOKENIZER_FILE), cfg.max_text_tokens),
            fusion=self.fusion,
            dims=Dims(
                BatchRange(lo, opt, hi),
                LengthRange(*dims[IMAGE_ENCODER.name]["length"]),
                LengthRange(*dims[TEXT_ENCODER.name]["length"]),
            ),
            graphs={
                precision: {
                    name: self._graph_entry(folder, path, precision, specs[name]) for name, path in graphs.items()
                }
                for precision, graphs in files.items()
            },
            source=Source(
                checkpoint=str(self.source.resolve()),
                weights_sha256=weights_sha256(self.source),
                config_sha256=sha256_file(self.source / CONFIG_FILE),
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
                self.model, self.encoder, self.fusion, self.options.gate_images, self.options.agreement_pairs
            )
            files = self.write_graphs(tmp)
            manifest = self.manifest(tmp, files)
            write_manifest(tmp, manifest)
            self.log("parity gate ...")
            report = gate_bundle(tmp, reference, input_sets, target)
            if report.trusted:
                _leave_out_failed(tmp, manifest, report)
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
        """The model's weights in fp32: what the fp32 image encoder graph holds."""
        return sum(p.numel() * 4 for p in self.model.parameters())

    def disk_bytes(self) -> int:
        """Disk a build needs at its peak: fp32 encoders hold about two copies of the weights (image and
        text), fp16 one, each int8 kind half of one, and int8 calibration an augmented fp32 copy at a time."""
        weights = self.weight_bytes()
        share = {"fp32": 2.0, "fp16": 1.0, "int8": 1.5, "int8-dynamic": 0.5}
        total = sum(share[p] for p in self.options.precisions)
        return int(weights * total) + (64 << 20)


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
            f"--precision int8: calibrating the {weight_bytes / 2**30:.1f} GiB image encoder needs about "
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


def _leave_out_failed(folder: Path, manifest: Manifest, report: GateReport) -> None:
    """Drop the precisions that missed their bars; the manifest lists the rest and says why the others are gone."""
    failed = report.failed_precisions()
    for precision in failed:
        shutil.rmtree(folder / precision)
    kept = report.without(failed)
    parity = Parity(kept.passed, tuple(kept.rows), {p: report.failures(p) for p in failed})
    graphs = {p: g for p, g in manifest.graphs.items() if p not in failed}
    write_manifest(folder, dataclasses.replace(manifest, graphs=graphs, parity=parity))


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
