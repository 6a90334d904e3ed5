"""How agff-run's commands talk to people and programs: lines on stderr through the progress bar, warnings as
lines, and one summary on stdout (short text on a terminal, one JSON line otherwise)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from agff_deploy.images import DEFAULT_MAX_PIXELS

ERROR_LINES = 3  # errors repeated in a person's summary (each is also on stderr)


def say(line: str) -> None:
    """One line on stderr, written through the progress bar so it never lands in the middle of the bar's line."""
    tqdm.write(line, file=sys.stderr)


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Python warnings (a truncated text or instruction, a library's notice) become `warning:` lines through the
    progress bar, each distinct message once: a per-batch warning would otherwise repeat for every batch."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message) not in seen:
            seen.add(str(message))
            say(f"warning: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def for_people(stream: TextIO, as_json: bool) -> bool:
    """A terminal gets a short human summary; pipes, files and `--json` get the one-line JSON summary."""
    return not as_json and stream.isatty()


def report(summary: dict, as_json: bool, human: Callable[[], list[str]]) -> None:
    print("\n".join(human()) if for_people(sys.stdout, as_json) else json.dumps(summary))


def error_lines(errors: list[str]) -> list[str]:
    if not errors:
        return []
    more = [f"  ... and {len(errors) - ERROR_LINES} more on stderr"] if len(errors) > ERROR_LINES else []
    return ["errors (also on stderr):", *(f"  {line}" for line in errors[:ERROR_LINES]), *more]


def output_options(p: argparse.ArgumentParser) -> None:
    """The image limit and how the summary is shown: the same for every command that embeds images."""
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="the one-line JSON summary even on a terminal")
