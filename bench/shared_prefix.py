"""Shared prefix: the AGFF image graph (the preset's K prompts) vs a single-prompt graph and a naive K+1-pass graph.

All three are ONNX graphs of the same weights run by ONNX Runtime on the CPU;
the naive graph repeats the whole sequence once per prompt, as K+1 separate
passes would. Run: python -m bench.shared_prefix [--batch 8] [--threads 2]
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

from agff_deploy.model import AGFFEmbedder
from agff_deploy.prompts import PrefixSharedPrompts
from export.graphs import ImageEncoderGraph, export_graph

from .common import image_feeds, interleaved_medians, ort_session, random_model


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


def measure(preset: str, batch: int, threads: int, folder: Path) -> dict:
    model, encoder = random_model(preset)
    feeds = image_feeds(encoder, batch)
    dims = {"batch": (1, 64), "length": encoder.formatter.length_range(with_image=True)}
    example = tuple(torch.from_numpy(feeds[k][:2]) for k in ("pixel_values", "input_ids", "attention_mask"))
    graphs = {
        "agff": ImageEncoderGraph(model),
        "single": ImageEncoderGraph(single_prompt_model(model)),
        "naive": NaivePromptsGraph(model),
    }
    sessions = {}
    for name, module in graphs.items():
        with contextlib.redirect_stdout(io.StringIO()):
            path = export_graph(module, "image_encoder", example, folder / f"{preset}-{name}.onnx", 18, dims)
        sessions[name] = ort_session(path, threads)
    agff_out = sessions["agff"].run(None, feeds)[0]
    naive_out = sessions["naive"].run(None, feeds)[0]
    times = interleaved_medians({name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}, repeat=15)
    return {
        "preset": preset,
        "image_tokens": model.config.num_image_tokens,
        "num_prompts": model.config.num_prompts,
        "batch": batch,
        "ms": {k: round(v * 1000, 2) for k, v in times.items()},
        "agff_over_single": round(times["agff"] / times["single"], 3),
        "naive_over_single": round(times["naive"] / times["single"], 3),
        "naive_over_agff": round(times["naive"] / times["agff"], 3),
        "agff_vs_naive_max_abs": float(np.abs(agff_out - naive_out).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["demo", "demo-448"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            r = measure(preset, args.batch, args.threads, Path(tmp))
            results.append(r)
            print(
                f"{preset:<9} {r['image_tokens']:>4} image tokens, K+1={r['num_prompts']}, batch {r['batch']}: "
                f"single {r['ms']['single']:.1f} ms | AGFF {r['ms']['agff']:.1f} ms ({r['agff_over_single']:.2f}x) | "
                f"naive {r['ms']['naive']:.1f} ms ({r['naive_over_single']:.2f}x); "
                f"AGFF = naive to {r['agff_vs_naive_max_abs']:.1e}"
            )
    print(json.dumps({"bench": "shared_prefix", "results": results}))


if __name__ == "__main__":
    main()
