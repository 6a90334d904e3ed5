"""MMVP-VLM as users download it.

    DIR/Questions.csv                      header, then `Question ID, Type, Statement`
    DIR/MLLM_VLM Images/<Type>/<id>.jpg

Consecutive rows form a pair; an odd id's correct image is the pair's first.
Statements are scored as 'a photo of <statement>' (the official script's prompt).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from agff_deploy.errors import InputError, MissingFileError

IMAGES_FOLDER = "MLLM_VLM Images"
HEADER = "Question ID,Type,Statement"


@dataclass(frozen=True)
class MMVPPair:
    pattern: str
    images: tuple[Path, Path]
    statements: tuple[str, str]


def _read_rows(questions: Path) -> list[list[str]]:
    """Rows of a UTF-8 CSV; another encoding (a re-save in a spreadsheet) is named as such, with the file."""
    try:
        text = questions.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{questions} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8 CSV or download it again"
        ) from None
    return list(csv.reader(io.StringIO(text, newline="")))


def _split_header(questions: Path, rows: list[list[str]]) -> list[list[str]]:
    """The statement rows; a file whose first line is already a statement lacks its header line."""
    if not rows:
        raise InputError(f"{questions} is empty; expected {HEADER!r} and then the statements")
    header = rows[0]
    if header and header[0].strip().isdigit():
        raise InputError(f"{questions}: the header line {HEADER!r} is missing (line 1 is a statement: {header})")
    if len(header) < 3:
        raise InputError(f"{questions}: header should be {HEADER!r}, found {header}")
    statements = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    if not statements:
        raise InputError(f"{questions} holds the header line but no statements")
    return statements


def load_mmvp_vlm(folder: str | Path) -> list[MMVPPair]:
    folder = Path(folder)
    questions = folder / "Questions.csv"
    if not questions.is_file():
        raise MissingFileError(f"{questions} not found: an MMVP-VLM folder holds Questions.csv and '{IMAGES_FOLDER}/'")
    rows = _split_header(questions, _read_rows(questions))
    if len(rows) % 2:
        raise InputError(f"{questions}: {len(rows)} statements; pairs need an even number")
    pairs = []
    for line, (first, second) in enumerate(zip(rows[::2], rows[1::2], strict=True)):
        ids, kinds, texts = [], [], []
        for row in (first, second):
            if len(row) < 3 or not row[0].strip().isdigit():
                raise InputError(
                    f"{questions}: row {2 * line + 2 + (row is second)} is not 'id, type, statement': {row}"
                )
            ids.append(int(row[0]))
            kinds.append(row[1].strip())
            texts.append(row[2].strip())
        if ids[0] % 2 != 1 or ids[1] != ids[0] + 1 or kinds[0] != kinds[1]:
            raise InputError(f"{questions}: rows {ids} do not form a pair (odd id, then the next id, same type)")
        images = tuple(folder / IMAGES_FOLDER / kinds[0] / f"{i}.jpg" for i in ids)
        for image in images:
            if not image.is_file():
                raise MissingFileError(f"{image} not found (listed in {questions})")
        pairs.append(MMVPPair(kinds[0], images, tuple(f"a photo of {t}" for t in texts)))  # type: ignore[arg-type]
    return pairs
