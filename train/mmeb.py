"""Reader for MMEB-train pairs as VLM2Vec publishes them (JSONL or parquet).

Each row: `qry`, `qry_image_path`, `pos_text`, `pos_image_path`, optional
`neg_text` / `neg_image_path`; image paths are relative to an image folder and
texts mark the image with Phi-3-V's `<|image_1|>`, mapped here to Qwen2-VL's
vision block. Bad rows are reported with their line number and skipped; the
read fails when more than `max_bad_fraction` of the rows are bad.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agff_deploy.errors import InputError, MissingFileError
from agff_deploy.images import ImageLoadError, verify_image
from agff_deploy.tokenization import IMAGE_PLACEHOLDER

from .pairs import Pair

PHI3V_IMAGE_TOKEN = "<|image_1|>"


class BadRow(InputError):
    pass


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, row
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    yield number, BadRow(f"not valid JSON ({err.msg})")


def map_image_token(text: str) -> str:
    return text.replace(PHI3V_IMAGE_TOKEN, IMAGE_PLACEHOLDER)


def _image(row: dict, field: str, image_root: Path) -> Path | None:
    value = row.get(field) or ""
    if not value:
        return None
    path = image_root / value
    if not path.is_file():
        raise BadRow(f"{field} {value!r}: no such file under {image_root}")
    try:
        verify_image(path)
    except ImageLoadError as err:
        raise BadRow(f"{field} {value!r}: unreadable image ({err})") from err
    return path


def _side(row: dict, text_field: str, image_field: str, image_root: Path) -> tuple[str, Path | None]:
    text = row.get(text_field) or ""
    if not isinstance(text, str):
        raise BadRow(f"{text_field} is not a string")
    image = _image(row, image_field, image_root)
    if not text.strip() and image is None:
        raise BadRow(f"{text_field} is empty and there is no {image_field}")
    return map_image_token(text), image


def parse_row(row: Any, image_root: Path) -> Pair:
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("row is not an object")
    query_text, query_image = _side(row, "qry", "qry_image_path", image_root)
    pos_text, pos_image = _side(row, "pos_text", "pos_image_path", image_root)
    return Pair(query_text, query_image, pos_text, pos_image)


def read_mmeb(path: str | Path, image_root: str | Path | None = None, max_bad_fraction: float = 0.05) -> list[Pair]:
    """Pairs of an MMEB-train file; bad rows are reported on stderr and skipped."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"MMEB data file {path} not found")
    root = Path(image_root) if image_root is not None else path.parent
    pairs, bad = [], 0
    for number, row in _rows(path):
        try:
            pairs.append(parse_row(row, root))
        except BadRow as err:
            bad += 1
            print(f"{path}:{number}: skipped: {err}", file=sys.stderr)
    total = len(pairs) + bad
    if total == 0:
        raise InputError(f"{path} has no rows")
    if bad / total > max_bad_fraction:
        raise InputError(
            f"{path}: {bad} of {total} rows are bad, more than the allowed {max_bad_fraction:.0%}; "
            "fix the rows listed above or raise --max-bad-fraction"
        )
    return pairs
