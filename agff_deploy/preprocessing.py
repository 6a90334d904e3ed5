"""Image preprocessing in numpy and Pillow (no torch), shared by trainer and runtime.

A model has one fixed input resolution (TensorRT engines want it and the
vision rotary tables are built for it), so images are resized straight to it
with Pillow's bicubic filter, then rescaled and normalised with CLIP
statistics as Qwen2-VL's processor does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import to_rgb

PREPROCESSOR_FILE = "preprocessor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocessor:
    height: int
    width: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def resize(self, image: Image.Image) -> np.ndarray:
        """RGB uint8 `[H, W, 3]` at the model's resolution."""
        rgb = to_rgb(image)
        if rgb.size != (self.width, self.height):
            rgb = rgb.resize((self.width, self.height), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]`."""
        scaled = pixels.astype(np.float32) * np.float32(1 / 255)
        normalized = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(normalized, -1, -3))

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.normalize(np.stack([self.resize(im) for im in images]))

    def to_hf_dict(self, patch_size: int, merge_size: int) -> dict:
        """Qwen2-VL processor settings that reproduce this preprocessing at the fixed size."""
        pixels = self.height * self.width
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": 3,
            "patch_size": patch_size,
            "merge_size": merge_size,
            "temporal_patch_size": 2,
            "size": {"shortest_edge": pixels, "longest_edge": pixels},
            "agff_fixed_size": [self.height, self.width],
        }

    def save(self, folder: str | Path, patch_size: int, merge_size: int) -> None:
        path = Path(folder) / PREPROCESSOR_FILE
        path.write_text(json.dumps(self.to_hf_dict(patch_size, merge_size), indent=2) + "\n")
