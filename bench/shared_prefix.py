"""Shared prefix: the AGFF image graph (the preset's K prompts) vs a single-prompt graph and a naive K+1-pass graph.

All three are ONNX graphs of the same weights run by ONNX Runtime on the CPU;
the naive graph repeats the whole sequence once per prompt, as K+1 separate
passes would. Each graph is exported once, then timed in --processes fresh processes, since on a
small CPU one process is one draw of a spread. Run:
python -m bench.shared_prefix [--batch 8] [--threads 2] [--processes 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agff_deploy.contract import IMAGE_ENCODER
from agff_deploy.model import AGFFEmbedder
from agff_deploy.prompts import PrefixSharedPrompts
from agff_deploy.provenance import provenance
from export.graphs import export_graph

from .common import (
    OneGraphImageEncoder,
    Spread,
    image_feeds,
    in_fresh_processes,
    ort_session,
    random_model,
    session_medians,
)


class NaivePromptsGraph(nn.Module):
    """K+1 full passes batched: every prompt gets its own copy of the prefix (what prefix sharing avoids)."""

    def __init__(self, model: AGFFEmbedder) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.single = PrefixSharedPrompts(1, cfg.prompt_length, cfg.hidden_size)

    def forward(self, pixel_values, input_ids, attention_mask):
        model, k1 = self.model, self.model.config.num_prompts
        lm = model.mllm.language_model
        embeds = model.merge_image_tokens(lm.embed_tokens(input_ids), input_ids, model.image_tokens(pixel_values))
        positions, next_position = model_positions(model, input_ids, attention_mask)
        b, length, d = embeds.shape
        prompts = model.prompts.vectors.to(embeds.dtype)  # [K+1, m, D]
        sequence = torch.cat([embeds.repeat_interleave(k1, 0), prompts.repeat(b, 1, 1)], dim=1)
        mask = self.single.attention_mask(attention_mask.repeat_interleave(k1, 0), sequence.dtype)
        prompt_positions = self.single.position_ids(next_position.repeat_interleave(k1, 0))
        all_positions = torch.cat([positions.repeat_interleave(k1, 1), prompt_positions], dim=2)
        hidden = lm(inputs_embeds=sequence, attention_mask=mask, position_ids=all_positions).last_hidden_state
        return F.normalize(hidden[:, -1].float(), dim=-1).view(b, k1, d)


def model_positions(model: AGFFEmbedder, input_ids, attention_mask):
    from agff_deploy.mrope import mrope_position_ids

    return mrope_position_ids(input_ids, attention_mask, model.image_token_id, model.image_rows, model.image_cols)


def single_prompt_model(model: AGFFEmbedder) -> AGFFEmbedder:
    import dataclasses

    single = AGFFEmbedder(dataclasses.replace(model.config, num_fine=0), model.mllm).eval()
    with torch.no_grad():
        single.prompts.vectors.copy_(model.prompts.vectors[:1])
    return single


def export_graphs(preset: str, batch: int, folder: Path) -> tuple[dict[str, Path], dict, AGFFEmbedder]:
    """The agff, single and naive graphs of one random-weight model at `preset`, and a batch of image feeds."""
    model, encoder = random_model(preset)
    feeds = image_feeds(encoder, batch)
    dims = {"batch": (1, 64), "length": encoder.formatter.length_range(with_image=True)}
    example = tuple(torch.from_numpy(feeds[k][:2]) for k in ("pixel_values", "input_ids", "attention_mask"))
    graphs = {
        "agff": OneGraphImageEncoder(model),
        "single": OneGraphImageEncoder(single_prompt_model(model)),
        "naive": NaivePromptsGraph(model),
    }
    paths = {}
    for name, module in graphs.items():
        with contextlib.redirect_stdout(io.StringIO()):
            paths[name] = export_graph(module, IMAGE_ENCODER, example, folder / f"{preset}-{name}.onnx", 18, dims)
    return paths, feeds, model


def measure(preset: str, batch: int, threads: int, processes: int, folder: Path) -> dict:
    """Export once here, then time the three graphs in `processes` fresh processes (one draw each)."""
    paths, feeds, model = export_graphs(preset, batch, folder)
    agff_out = ort_session(paths["agff"], threads).run(None, feeds)[0]
    naive_out = ort_session(paths["naive"], threads).run(None, feeds)[0]
    draws = in_fresh_processes(session_medians, paths, feeds, threads, 15, processes=processes)
    ms = {name: Spread.of(d[name] * 1000 for d in draws) for name in paths}
    ratios = {
        f"{a}_over_{b}": Spread.of(d[a] / d[b] for d in draws)
        for a, b in (("agff", "single"), ("naive", "single"), ("naive", "agff"))
    }
    return {
        "preset": preset,
        "image_tokens": model.config.num_image_tokens,
        "num_prompts": model.config.num_prompts,
        "batch": batch,
        "processes": processes,
        "ms": ms,
        **ratios,
        "agff_vs_naive_max_abs": float(np.abs(agff_out - naive_out).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes to time in (one draw each)")
    parser.add_argument("--presets", nargs="+", default=["demo", "demo-448"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            r = measure(preset, args.batch, args.threads, args.processes, Path(tmp))
            results.append(r)
            print(
                f"{preset:<9} {r['image_tokens']:>4} image tokens, K+1={r['num_prompts']}, batch {r['batch']}, "
                f"median [min..max] over {r['processes']} processes: single {r['ms']['single']:.1f} ms | "
                f"AGFF {r['ms']['agff']:.1f} ms ({r['agff_over_single']:.2f}x) | "
                f"naive {r['ms']['naive']:.1f} ms ({r['naive_over_single']:.2f}x); "
                f"AGFF = naive to {r['agff_vs_naive_max_abs']:.1e}"
            )
    print(
        json.dumps(
            {"bench": "shared_prefix", "results": results, **provenance("bench.shared_prefix", args)},
            default=Spread.to_json,
        )
    )


if __name__ == "__main__":
    main()
