"""The model families agff-deploy builds on, chosen by a config's `model_type` (docs/families.md: adding one)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, MissingFileError
from .family import ModelFamily, PublishedArchitecture, SingleVectorConvention, VisionOutputs
from .qwen2_vl import QWEN2_VL
from .qwen3_vl import QWEN3_VL

FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (QWEN2_VL, QWEN3_VL)}

__all__ = [
    "FAMILIES",
    "ModelFamily",
    "PublishedArchitecture",
    "SingleVectorConvention",
    "VisionOutputs",
    "family_of",
    "folder_family",
]


def family_of(base: Mapping[str, Any], where: str = "the checkpoint's base config") -> ModelFamily:
    """The family of a base config dict (a config.json, or an AGFF checkpoint's `base`), or one line naming the type
    found and the types supported."""
    model_type = base.get("model_type")
    if model_type not in FAMILIES:
        supported = ", ".join(f"{f.model_type} ({f.label})" for f in FAMILIES.values())
        raise ArtifactError(f"{where}: model_type {model_type!r} is not supported; agff-deploy builds on {supported}")
    return FAMILIES[model_type]


def folder_family(folder: str | Path) -> ModelFamily:
    """The family of a `save_pretrained` folder, read from its config.json before transformers sees it."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found: a model folder in the save_pretrained layout holds config.json")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} is not a model config (a JSON object)")
    return family_of(config, str(path))
