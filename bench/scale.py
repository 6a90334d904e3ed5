"""A real-size model through export, gate and runtime on this machine, measured side by side in one run.

    python -m bench.scale --ckpt CKPT --work DIR        # e.g. a checkpoint trained from a qwen2-vl-2b base

Prints, and writes to DIR/scale.json:
- export: seconds and peak RSS per stage (load, PyTorch gate reference, each precision's graphs, the
  ONNX Runtime gate), sampled from the exporter's own process;
- the bundle's size per precision (graphs plus external data);
- runtime, per precision, each in a fresh process: load time, peak RSS, latency per image (448 px at
  the checkpoint's size) and per text at batch 1 and 8, through the torch-free `Embedder`;
- fp32 vs int8-dynamic: latency ratio, min cosine and top-1 agreement of image->caption and
  caption->image retrieval;
- the parity gate's rows per precision, and for int8 and int4 how many weight MatMuls stayed in float;
- the model's FLOPs per image (counted from its layers) and the fp32 image encoder's achieved GFLOP/s
  as a share of this machine's fp32 GEMM peak, measured in the same run with a large MatMul in ONNX
  Runtime, the library the graphs run on.

`--reuse` keeps an export already in DIR (its timings too), so the runtime half can be rerun alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.config import AGFFConfig
from agff_deploy.contract import SCORER, STORED_ENCODERS
from agff_deploy.manifest import read_manifest
from agff_deploy.provenance import provenance
from agff_deploy.scenes import make_scene
from runtime.scoring import fused_similarity

from .common import in_fresh_processes, ort_session

SCENE_SEED = 900_000_000
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int4")


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    peak_rss: int = 0


@dataclass
class ExportRun:
    seconds: float
    peak_rss: int
    stages: list[Stage] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def _stage_of(line: str) -> str | None:
    """The stage a log line of `export.to_onnx` closes (the exporter prints each step when it ends)."""
    text = line.strip()
    if text.startswith("exporting "):
        return "load checkpoint"
    if text.startswith("parity gate: ") and "held-out pairs" in text:
        return "PyTorch gate sets A and B"
    if text.startswith("scorer.onnx"):
        return "PyTorch gate reference + scorer"
    for precision in PRECISIONS:
        if text.startswith(f"{precision}/"):
            return f"{precision} graphs"
    if text.startswith(("parity gate passed", "parity gate FAILED", "bundle written with")):
        return "ONNX Runtime gate"
    return None


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_export(command: list[str], period: float = 0.5) -> ExportRun:
    """Run the exporter, sampling its resident memory; each sample goes to the stage whose line comes next."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    events: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.append((time.perf_counter(), line.rstrip("\n")))
            print(f"    | {line}", end="", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        samples.append((time.perf_counter(), _rss(proc.pid)))
        time.sleep(period)
    reader.join()
    if proc.returncode != 0 and not any(line.startswith("bundle written with") for _, line in events):
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}); its output is above")
    stages: dict[str, Stage] = {}
    previous = started
    for when, line in events:
        name = _stage_of(line)
        if name is None:
            continue
        stage = stages.setdefault(name, Stage(name))
        stage.seconds += when - previous
        stage.peak_rss = max([stage.peak_rss] + [rss for t, rss in samples if previous <= t <= when])
        previous = when
    peak = max(rss for _, rss in samples) if samples else 0
    log = [f"{when - started:8.1f} {line}" for when, line in events]
    return ExportRun(time.perf_counter() - started, peak, list(stages.values()), log)


def bundle_sizes(bundle: Path) -> dict[str, int]:
    """Bytes per precision: its vision and language encoder graphs and their external data (the shared scorer
    apart)."""
    manifest = read_manifest(bundle)
    sizes = {}
    for precision, graphs in manifest.graphs.items():
        total = 0
        for name in STORED_ENCODERS:
            entry = graphs[name]
            total += (bundle / entry.file).stat().st_size + sum(d.bytes for d in entry.external_data)
        sizes[precision] = total
    return sizes


def add_ungated_int8_dynamic(bundle: Path) -> None:
    """The exporter's own int8-dynamic quantisation of the bundle's fp32 encoders, added WITHOUT the gate.

    For measuring speed and agreement where the gate refused int8-dynamic (the 2B text encoder missed
    the 0.98 cosine bar by 0.0002 here). The manifest marks the entries `"ungated": true`, and the runtime warns
    when it loads them.
    """
    from agff_deploy.manifest import sha256_file, write_manifest
    from export.graphs import external_data_entries
    from export.precision import quantize_dynamic_int8

    manifest = read_manifest(bundle)
    folder = bundle / "int8-dynamic"
    folder.mkdir(exist_ok=True)
    fp32 = manifest.graphs["fp32"]
    entries = {SCORER.name: fp32[SCORER.name]}
    for name in STORED_ENCODERS:
        path = quantize_dynamic_int8(bundle / fp32[name].file, folder / f"{name}.onnx")
        entries[name] = dataclasses.replace(
            fp32[name],
            file=str(path.relative_to(bundle)),
            sha256=sha256_file(path),
            external_data=external_data_entries(bundle, path),
            backends=("onnxruntime",),
            ungated=True,
        )
    write_manifest(bundle, dataclasses.replace(manifest, graphs={**manifest.graphs, "int8-dynamic": entries}))


def quantized_shares(bundle: Path) -> dict[str, dict[str, dict[str, float | int]]]:
    """Per int8 and int4 graph: its weight MatMuls quantised and kept in float (read from the graph itself)."""
    from export.precision import int4_counts

    from .int8_gate import float_share

    manifest = read_manifest(bundle)
    shares: dict[str, dict[str, dict[str, float | int]]] = {}
    for precision in ("int8", "int4"):
        for name in STORED_ENCODERS if precision in manifest.graphs else ():
            path = bundle / manifest.graphs[precision][name].file
            counted = float_share(path) if precision == "int8" else dataclasses.asdict(int4_counts(path))
            shares.setdefault(precision, {})[name] = counted
    return shares


def device_bundle_bytes(bundle: Path, precision: str) -> int:
    """What a device bundle of `precision` alone (`--without-fp32`) holds: its graphs, the scorer, the gate record,
    tokenizer and manifest."""
    shared = ("scorer.onnx", "gate.npz", "tokenizer.json", "manifest.json")
    return bundle_sizes(bundle)[precision] + sum((bundle / name).stat().st_size for name in shared)


def measure_text_only(bundle: str, precision: str, threads: int, texts: int) -> dict[str, Any]:
    """Peak RSS of a process that only embeds texts: the vision encoder is never loaded."""
    from runtime.embedder import Embedder

    model = Embedder.load(bundle, precision=precision, threads=threads)
    _, captions = _scenes(texts, 28)
    model.embed_texts(captions)
    vision_loaded = model.runners["image_encoder"].leases["vision_encoder"].runner.is_active
    model.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"precision": precision, "peak_rss": rss, "vision_loaded": vision_loaded}


def _scenes(count: int, size: int) -> tuple[list[np.ndarray], list[str]]:
    scenes = [make_scene(SCENE_SEED + i, held_out=True) for i in range(count)]
    return [s.render(size) for s in scenes], [s.caption() for s in scenes]


ONE_GRAPH = "one-graph"  # the fp32 layout before format 2: one image and one text graph, each with the LM


def export_one_graph(ckpt: str, bundle: str) -> None:
    """The checkpoint's fp32 image and text encoders as one graph each (format 1's layout) into `bundle/one-graph`,
    with the bundle's dims: the layout the two-graph pipeline replaced, timed beside it in the same run."""
    import contextlib
    import io

    import torch

    from agff_deploy.checkpoint import item_encoder, load_checkpoint
    from agff_deploy.contract import IMAGE_ENCODER, TEXT_ENCODER
    from export.graphs import export_graph

    from .common import OneGraphImageEncoder, OneGraphTextEncoder

    manifest = read_manifest(Path(bundle))
    model, tokenizer = load_checkpoint(Path(ckpt), image_size=manifest.fixed_size())
    encoder = item_encoder(model.config, tokenizer)
    folder = Path(bundle) / ONE_GRAPH
    folder.mkdir(exist_ok=True)
    batch = (manifest.dims.batch.min, manifest.dims.batch.max)
    pictures, captions = _scenes(2, manifest.image.size[0])
    for spec, module, feed, length in (
        (IMAGE_ENCODER, OneGraphImageEncoder(model), encoder.feeds(["", ""], pictures), manifest.dims.image_length),
        (TEXT_ENCODER, OneGraphTextEncoder(model), encoder.feeds(captions), manifest.dims.text_length),
    ):
        example = tuple(torch.from_numpy(feed[n]) for n in spec.input_names)
        dims = {"batch": batch, "length": (length.min, length.max)}
        with contextlib.redirect_stdout(io.StringIO()):
            export_graph(module, spec, example, folder / f"{spec.name}.onnx", 18, dims)


def _one_graph_embedder(bundle: Path, threads: int):
    """An Embedder over the one-graph encoders, with the bundle's preprocessing and scorer."""
    from agff_deploy.contract import IMAGE_ENCODER, TEXT_ENCODER, resolved_graphs
    from runtime.embedder import Embedder
    from runtime.ort_runner import OnnxSessionLoader, OrtRunner
    from runtime.spec import ModelSpec

    manifest = read_manifest(bundle)
    specs = resolved_graphs(manifest.sizes())
    runners = {
        spec.name: OrtRunner(
            OnnxSessionLoader(bundle / ONE_GRAPH / f"{spec.name}.onnx", threads=threads), specs[spec.name]
        )
        for spec in (IMAGE_ENCODER, TEXT_ENCODER)
    }
    spec = ModelSpec.from_manifest(bundle, manifest)
    return Embedder(spec, runners, "onnxruntime", bundle, manifest.source.weights_sha256)


def measure_runtime(bundle: str, precision: str, threads: int, images: int, texts: int) -> dict[str, Any]:
    """One precision (or the one-graph layout) in this (fresh) process: load, latencies at batch 1 and `images`, and
    its embeddings."""
    from runtime.embedder import Embedder

    def timed(fn) -> tuple[float, Any]:
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    started = time.perf_counter()
    if precision == ONE_GRAPH:
        loaded = _one_graph_embedder(Path(bundle), threads)
    else:
        loaded = Embedder.load(bundle, precision=precision, threads=threads)
    with loaded as model:
        load_seconds = time.perf_counter() - started
        pictures, captions = _scenes(max(images, texts), model.encoder.scene_size)
        pixels = model.pixels(pictures[:images])
        model.batch_size = max(images, texts)
        model.embed_pixels(pixels[:1])  # first run: graph initialisation, not latency
        image_1, _ = timed(lambda: model.embed_pixels(pixels[:1]))
        image_n, image_emb = timed(lambda: model.embed_pixels(pixels))
        model.embed_texts(captions[:1])
        text_1, _ = timed(lambda: model.embed_texts(captions[:1]))
        text_n, text_emb = timed(lambda: model.embed_texts(captions[:texts]))
    return {
        "precision": precision,
        "load_s": load_seconds,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "image_ms": {"1": image_1 * 1000, str(images): image_n * 1000 / images},
        "text_ms": {"1": text_1 * 1000, str(texts): text_n * 1000 / texts},
        "image_embeddings": image_emb,
        "text_embeddings": text_emb,
    }


def gemm_peak_gflops(threads: int, sizes: tuple[int, ...] = (2048, 4096), repeat: int = 6) -> float:
    """fp32 GEMM throughput of ONNX Runtime's MatMul on this machine, the best over square sizes and repeats.

    The ceiling for the encoders. A single size and draw read from 118 to 162 GFLOP/s on this 2-core
    machine from one run to the next, so the best of several is the fairer ceiling.
    """
    return max(_gemm_gflops(threads, n, repeat) for n in sizes)


def _gemm_gflops(threads: int, n: int, repeat: int) -> float:
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, str(path))
        session = ort_session(path, threads)
        feeds = {"a": np.random.rand(n, n).astype(np.float32), "b": np.random.rand(n, n).astype(np.float32)}
        session.run(None, feeds)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            session.run(None, feeds)
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def image_gflop(config: AGFFConfig, instruction_tokens: int = 0) -> float:
    """Multiply-adds x 2 of one image item through the image encoder, counted from the model's own layers (built on
    the meta device, so any family): the patch embedding and every vision block's Linear once per patch, the
    mergers' (DeepStack's included) once per image token, the language layers' once per token, and attention's
    two products in each."""
    import torch
    from torch import nn

    from agff_deploy.model import AGFFEmbedder

    with torch.device("meta"):
        model = AGFFEmbedder(config)
    visual, lm = model.mllm.visual, model.mllm.language_model

    def linear(module: nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))

    patches = (config.image_size[0] // config.patch_size) * (config.image_size[1] // config.patch_size)
    width = visual.blocks[0].attn.qkv.in_features
    macs = patches * (3 * config.patch_size**2 * width + linear(visual.blocks))
    macs += len(visual.blocks) * 2 * patches * patches * width
    macs += patches // config.merge_size**2 * (linear(visual) - linear(visual.blocks))
    tokens = config.num_image_tokens + 8 + instruction_tokens + config.num_prompts * config.prompt_length
    attention = lm.layers[0].self_attn.q_proj.out_features
    macs += tokens * linear(lm.layers) + len(lm.layers) * 2 * tokens * tokens * attention
    return 2 * macs / 1e9


def agreement(reference: dict[str, Any], other: dict[str, Any], fusion: tuple[float, float, np.ndarray]) -> dict:
    """Min cosine of every embedding vector, and how often both pick the same top-1 in each direction."""
    cosines = []
    for key in ("image_embeddings", "text_embeddings"):
        a = reference[key].reshape(-1, reference[key].shape[-1]).astype(np.float64)
        b = other[key].reshape(-1, other[key].shape[-1]).astype(np.float64)
        cosines.append((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
    ref_scores = fused_similarity(reference["image_embeddings"], reference["text_embeddings"], *fusion)
    scores = fused_similarity(other["image_embeddings"], other["text_embeddings"], *fusion)
    i2t = ref_scores.argmax(1) == scores.argmax(1)
    t2i = ref_scores.argmax(0) == scores.argmax(0)
    return {
        "min_cosine": float(np.concatenate(cosines).min()),
        "top1_agreement": float(np.concatenate([i2t, t2i]).mean()),
        "decisions": int(i2t.size + t2i.size),
    }


def _layout_comparison(pipeline: dict[str, Any], one_graph: dict[str, Any]) -> dict[str, Any]:
    """Time ratios (pipeline / one graph, under 1 is faster) per batch, and how far apart their embeddings are."""
    from export.check import agreement

    pairs = [(pipeline[k], one_graph[k]) for k in ("image_embeddings", "text_embeddings")]
    cosine, max_abs = min(agreement(a, b)[0] for a, b in pairs), max(agreement(a, b)[1] for a, b in pairs)
    return {
        "image_time_ratio": {k: pipeline["image_ms"][k] / one_graph["image_ms"][k] for k in pipeline["image_ms"]},
        "text_time_ratio": {k: pipeline["text_ms"][k] / one_graph["text_ms"][k] for k in pipeline["text_ms"]},
        "peak_rss_ratio": pipeline["peak_rss"] / one_graph["peak_rss"],
        "max_abs": max_abs,
        "min_cosine": cosine,
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder (e.g. trained from a 2B base)")
    p.add_argument("--work", type=Path, required=True, help="folder for the bundle and scale.json")
    p.add_argument(
        "--precision", nargs="+", default=["fp32", "fp16"], choices=PRECISIONS, help="exported (default: %(default)s)"
    )
    p.add_argument(
        "--runtime-precisions",
        nargs="+",
        default=["fp32", "fp16"],
        choices=PRECISIONS,
        help="timed (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--images", type=int, default=8, help="image batch for latency and agreement (default: 8)")
    p.add_argument("--texts", type=int, default=64, help="captions for latency and agreement (default: 64)")
    p.add_argument("--calib-samples", type=int, default=16, help="int8 calibration scenes (default: 16)")
    p.add_argument("--agreement-pairs", type=int, default=0, help="the gate's retrieval check (default: off)")
    p.add_argument("--reuse", action="store_true", help="keep an export already in --work")
    p.add_argument(
        "--one-graph",
        action="store_true",
        help="also export the fp32 encoders as one graph each (the layout before format 2) and time them beside the "
        "vision + language pipeline",
    )
    p.add_argument(
        "--ungated-int8-dynamic",
        action="store_true",
        help="add int8-dynamic encoders quantised from the fp32 ones without the gate (speed where the gate refuses)",
    )
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.work / "bundle"
    export_file = args.work / "export.json"
    if args.reuse and export_file.is_file() and bundle.is_dir():
        export = json.loads(export_file.read_text())
    else:
        command = [sys.executable, "-m", "export.to_onnx", str(args.ckpt), "-o", str(bundle), "--precision"]
        command += [*args.precision, "--gate-images", "1", "2", "--calib-samples", str(args.calib_samples)]
        command += ["--agreement-pairs", str(args.agreement_pairs), "--fp16-guard-samples", "4"]
        print("export:", " ".join(command[1:]))
        run = run_export(command)
        export = {
            "seconds": run.seconds,
            "peak_rss": run.peak_rss,
            "stages": [vars(s) for s in run.stages],
            "log": run.log,
        }
        export_file.write_text(json.dumps(export, indent=2) + "\n")
    print(f"\nexport + gate: {export['seconds']:.0f} s, peak RSS {_gib(export['peak_rss'])}")
    for stage in export["stages"]:
        print(f"  {stage['name']:<34} {stage['seconds']:>7.0f} s   peak RSS {_gib(stage['peak_rss'])}")
    if args.ungated_int8_dynamic and "int8-dynamic" not in read_manifest(bundle).graphs:
        add_ungated_int8_dynamic(bundle)
        print("int8-dynamic: quantised from the fp32 graphs WITHOUT the parity gate (--ungated-int8-dynamic)")
    sizes = bundle_sizes(bundle)
    print("bundle size: " + ", ".join(f"{k} {_gib(v)}" for k, v in sizes.items()))

    results = {}
    if args.one_graph:
        if not (bundle / ONE_GRAPH / "image_encoder.onnx").is_file():
            print("exporting the one-graph fp32 encoders (the layout before format 2) ...", flush=True)
            in_fresh_processes(export_one_graph, str(args.ckpt), str(bundle), processes=1)
        print(f"runtime {ONE_GRAPH} ...", flush=True)
        job = (str(bundle), ONE_GRAPH, args.threads, args.images, args.texts)
        results[ONE_GRAPH] = in_fresh_processes(measure_runtime, *job, processes=1)[0]
    for precision in args.runtime_precisions:
        if precision not in read_manifest(bundle).graphs:
            print(f"runtime {precision}: not in the bundle (the gate left it out)")
            continue
        print(f"runtime {precision} ...", flush=True)
        job = (str(bundle), precision, args.threads, args.images, args.texts)
        results[precision] = in_fresh_processes(measure_runtime, *job, processes=1)[0]
        text_only = in_fresh_processes(
            measure_text_only, str(bundle), precision, args.threads, args.texts, processes=1
        )[0]
        results[precision]["text_only"] = text_only
        print(
            f"  text-only process: peak RSS {_gib(text_only['peak_rss'])}, vision loaded: {text_only['vision_loaded']}"
        )
    manifest = read_manifest(bundle)
    fusion = (manifest.fusion.t_in, manifest.fusion.t_f, np.asarray(manifest.fusion.pattern_bias))
    config = AGFFConfig.load(args.ckpt)
    gflop = image_gflop(config)
    peak = gemm_peak_gflops(args.threads)
    n = str(args.images)
    print(f"\n{'precision':<13}{'load s':>8}{'peak RSS':>11}{'image ms b1':>13}{'image ms b' + n:>13}"
          f"{'text ms b1':>12}{'text ms b' + str(args.texts):>13}")  # fmt: skip
    for precision, r in results.items():
        print(
            f"{precision:<13}{r['load_s']:>8.1f}{_gib(r['peak_rss']):>11}{r['image_ms']['1']:>13.0f}"
            f"{r['image_ms'][n]:>13.0f}{r['text_ms']['1']:>12.0f}{r['text_ms'][str(args.texts)]:>13.0f}"
        )
    summary: dict[str, Any] = {
        "export": export,
        "family": manifest.model.family,
        "parity": [dataclasses.asdict(row) for row in manifest.parity.rows] if manifest.parity else [],
        "left_out": dict(manifest.parity.left_out) if manifest.parity else {},
        "kept_in_float": quantized_shares(bundle),
        "bundle_bytes": sizes,
        "device_bundle_bytes": {p: device_bundle_bytes(bundle, p) for p in sizes if p != "fp32"},
        "gflop_per_image": gflop,
        "gemm_gflops": peak,
    }
    fp32 = results.get("fp32")
    if fp32:
        achieved = gflop / (fp32["image_ms"][n] / 1000)
        summary["fp32_image_gflops"] = achieved
        print(f"\nimage encoder: {gflop:.0f} GFLOP per image; fp32 at batch {n}: {achieved:.1f} GFLOP/s")
        print(f"GEMM peak (ONNX Runtime MatMul, best of 2048^3 and 4096^3, {args.threads} threads): "
              f"{peak:.1f} GFLOP/s -> {achieved / peak:.0%} of peak")  # fmt: skip
    if fp32 and "int8-dynamic" in results:
        dyn = results["int8-dynamic"]
        match = agreement(fp32, dyn, fusion)
        speedup = {k: fp32["image_ms"][k] / dyn["image_ms"][k] for k in fp32["image_ms"]}
        speedup_text = {k: fp32["text_ms"][k] / dyn["text_ms"][k] for k in fp32["text_ms"]}
        summary["int8_dynamic_vs_fp32"] = dict(match, image_speedup=speedup, text_speedup=speedup_text)
        print(
            f"int8-dynamic vs fp32: image {speedup['1']:.2f}x (batch 1), {speedup[n]:.2f}x (batch {n}); text "
            f"{speedup_text['1']:.2f}x / {speedup_text[str(args.texts)]:.2f}x; min cosine {match['min_cosine']:.4f}; "
            f"top-1 agreement {match['top1_agreement']:.1%} over {match['decisions']} retrievals"
        )
    if fp32 and ONE_GRAPH in results:
        summary["pipeline_vs_one_graph"] = _layout_comparison(fp32, results[ONE_GRAPH])
        ratios = summary["pipeline_vs_one_graph"]
        print(
            f"vision + language pipeline vs one graph (fp32, same run): time ratio image "
            f"{ratios['image_time_ratio']['1']:.3f} (batch 1), {ratios['image_time_ratio'][n]:.3f} (batch {n}); "
            f"text {ratios['text_time_ratio']['1']:.3f} / {ratios['text_time_ratio'][str(args.texts)]:.3f}; "
            f"peak RSS {_gib(fp32['peak_rss'])} vs {_gib(results[ONE_GRAPH]['peak_rss'])}; "
            f"embeddings min cosine {ratios['min_cosine']:.7f}"
        )
    summary["runtime"] = {k: {m: v for m, v in r.items() if not m.endswith("embeddings")} for k, r in results.items()}
    summary.update(provenance("bench.scale", args, argv))
    (args.work / "scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"bench": "scale", **{k: v for k, v in summary.items() if k != "export"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
