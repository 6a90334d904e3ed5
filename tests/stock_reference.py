"""The stock Hugging Face Qwen2-VL / Qwen3-VL forward, one item and one prompt at a time.

This is the reference the AGFF module must equal: HF's own packed vision
tower, masked_scatter merge (and Qwen3-VL's DeepStack additions), Python-loop
`get_rope_index` and causal mask, with each soft prompt appended after the
unpadded prefix in its own pass.
"""

import torch
import torch.nn.functional as F
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

PATCHIFY = Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False, do_normalize=False)


def hf_pixel_values(pixels: torch.Tensor, patch_size: int, merge_size: int) -> dict[str, torch.Tensor]:
    """HF's packed patches for one normalised `[3, H, W]` image."""
    PATCHIFY.patch_size, PATCHIFY.merge_size = patch_size, merge_size
    out = PATCHIFY(images=[pixels.cpu().numpy()], return_tensors="pt", input_data_format="channels_first")
    return {
        "pixel_values": out["pixel_values"].to(pixels.device),
        "image_grid_thw": out["image_grid_thw"].to(pixels.device),
    }


def hf_packed(patches: torch.Tensor, grid: torch.Tensor) -> dict[str, torch.Tensor]:
    """HF's packed input for one image from our padded patch row: the image's own patches, each frame repeated
    into the stock processor's two temporal slots, and its `[1, 3]` grid."""
    rows, cols = (int(v) for v in grid)
    own = patches[: rows * cols]
    channels = 3
    frame = own.view(len(own), channels, 1, -1)
    return {
        "pixel_values": frame.expand(-1, -1, 2, -1).reshape(len(own), -1),
        "image_grid_thw": torch.tensor([[1, rows, cols]], device=patches.device),
    }


@torch.no_grad()
def separate_passes(model, input_ids, attention_mask, pixel_values=None, image_grid=None) -> torch.Tensor:
    configs = (model.mllm.language_model.config, model.mllm.visual.config)
    chosen = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = "eager"
    try:
        return _separate_passes(model, input_ids, attention_mask, pixel_values, image_grid)
    finally:
        for config, name in zip(configs, chosen, strict=True):
            config._attn_implementation = name


def _separate_passes(model, input_ids, attention_mask, pixel_values, image_grid) -> torch.Tensor:
    mllm, cfg = model.mllm, model.config
    m = cfg.prompt_length
    items = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b][attention_mask[b].bool()]
        image = {} if pixel_values is None else hf_packed(pixel_values[b], image_grid[b])
        full = torch.cat([ids, torch.zeros(m, dtype=ids.dtype, device=ids.device)])[None]
        prompts = []
        for i in range(cfg.num_prompts):
            embeds = mllm.language_model.embed_tokens(full).clone()
            embeds[0, -m:] = model.prompts.vectors[i]
            token_types = (full == model.image_token_id).int()
            grid = image.get("image_grid_thw")
            positions, _ = mllm.get_rope_index(full, mm_token_type_ids=token_types, image_grid_thw=grid)
            hidden = mllm(inputs_embeds=embeds, position_ids=positions, **image)
            prompts.append(F.normalize(hidden.last_hidden_state[0, -1], dim=-1))
        items.append(torch.stack(prompts))
    return torch.stack(items)
