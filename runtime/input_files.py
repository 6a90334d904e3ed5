"""What a command line's files, folders and globs come to: image paths, errors and skipped entries.

Every entry found is counted somewhere: a folder is walked for files with an
image file name (others are skipped, not failed), a glob matching nothing
and a dangling symlink are errors (the user meant those files to be
embedded), and a plain path is taken as given (the pipeline says if it
cannot be read).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from agff_deploy.images import IMAGE_SUFFIXES


@dataclass
class Inputs:
    paths: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # files in folders whose names are not image names


def expand_inputs(inputs: list[str]) -> Inputs:
    """Files, folders (recursive, image file names) and globs -> paths, errors and skipped files."""
    found = Inputs()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for entry in sorted(path.rglob("*")):
                _classify_entry(entry, found, images_only=True)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            for entry in matches:
                _classify_entry(entry, found, images_only=False)
            if not matches:
                found.errors.append(f"{item}: no files match")
        else:
            found.paths.append(path)
    return found


def _classify_entry(entry: Path, found: Inputs, images_only: bool) -> None:
    """One folder entry or glob match into paths, errors or skipped; folders themselves are walked, not counted."""
    if images_only and entry.suffix.lower() not in IMAGE_SUFFIXES:
        if entry.is_file() or (entry.is_symlink() and not entry.exists()):
            found.skipped.append(entry)
    elif entry.is_symlink() and not entry.exists():
        found.errors.append(f"{entry}: dangling symlink to {os.readlink(entry)}")
    elif entry.is_file():
        found.paths.append(entry)
