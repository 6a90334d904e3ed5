"""MMEB (v1 eval) as users download it: one folder per subset, rows of parquet or JSONL.

Each row: `qry_text`, `qry_img_path`, `tgt_text` (list), `tgt_img_path` (list);
the first candidate is the positive; `<|image_1|>` marks the image. Image
paths are relative to an image folder. Reported: hit@1 per subset and per
meta-task (MMEB's four).

A downloaded folder holds more than subsets: the hub CLI's `.cache/`, git's
`.git/`, the unzipped images, and subsets outside MMEB's score (CIFAR-100).
Only folders with parquet or JSONL files count as subsets, and only the 36 in
`META_TASKS` count toward the scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agff_deploy.errors import InputError, MissingFileError
from agff_deploy.tokenization import IMAGE_PLACEHOLDER

PHI3V_IMAGE_TOKEN = "<|image_1|>"
# VLM2Vec's 36 scored subsets by meta-task, as in TIGER-AI-Lab/VLM2Vec adhoc/data/download_datasets.py
# (IMAGE_DATASETS: Image-CLS 10, Image-QA 10, Image-RET 12, Image-VG 4) and experiments/report_score.py.
META_TASKS = {
    "classification": ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                       "ImageNet-R", "ObjectNet", "Country211"),
    "vqa": ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA",
            "TextVQA"),
    "retrieval": ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA",
                  "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"),
    "grounding": ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
}  # fmt: skip
SCORED_SUBSETS = frozenset(name for names in META_TASKS.values() for name in names)


def meta_task(subset: str) -> str | None:
    """The meta-task a subset counts toward, or None for a subset outside MMEB's score."""
    for task, subsets in META_TASKS.items():
        if subset in subsets:
            return task
    return None


@dataclass(frozen=True)
class Side:
    text: str
    image: Path | None


@dataclass(frozen=True)
class MMEBItem:
    query: Side
    candidates: tuple[Side, ...]


def _side(text: str | None, image: str | None, root: Path, where: str) -> Side:
    path = None
    if image:
        path = root / image
        if not path.is_file():
            raise MissingFileError(f"{where}: image {image!r} not found under {root}")
    return Side((text or "").replace(PHI3V_IMAGE_TOKEN, IMAGE_PLACEHOLDER).replace(IMAGE_PLACEHOLDER, "").strip(), path)


def _row_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.parquet"), *folder.glob("*.jsonl")])


def _rows(folder: Path) -> list[tuple[str, dict]]:
    files = _row_files(folder)
    if not files:
        raise MissingFileError(f"{folder}: no .parquet or .jsonl file in this MMEB subset folder")
    rows = []
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += [(f"{path}:{i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append((f"{path}:{i + 1}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from err
    return rows


def load_mmeb_subset(folder: str | Path, image_root: str | Path) -> list[MMEBItem]:
    folder, root = Path(folder), Path(image_root)
    items = []
    for where, row in _rows(folder):
        missing = [k for k in ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path") if k not in row]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)}")
        texts, images = row["tgt_text"], row["tgt_img_path"]
        if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images) or not texts:
            raise InputError(f"{where}: tgt_text and tgt_img_path must be lists of the same, non-zero length")
        query = _side(row["qry_text"], row["qry_img_path"], root, where)
        candidates = tuple(_side(t, i, root, where) for t, i in zip(texts, images, strict=True))
        items.append(MMEBItem(query, candidates))
    return items


def _is_subset(path: Path) -> bool:
    """Hidden folders (`.cache/`, `.git/`) and folders without rows (unzipped images) are not subsets."""
    return path.is_dir() and not path.name.startswith(".") and bool(_row_files(path))


def load_mmeb(folder: str | Path, image_root: str | Path | None = None) -> dict[str, list[MMEBItem]]:
    """Every subset folder under `folder` (images relative to `image_root`, default `folder`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"MMEB folder {folder} not found")
    subsets = sorted(p for p in folder.iterdir() if _is_subset(p))
    if not subsets:
        raise MissingFileError(
            f"{folder}: no subset folders (expected one folder per MMEB subset, each with .parquet or .jsonl files)"
        )
    return {s.name: load_mmeb_subset(s, image_root or folder) for s in subsets}
