"""Every code block of the README and the manual runs in a test, or says why it does not.

A fenced `bash` block with no mark before it runs here, as written, on the tiny exported bundle. One preceded by
`<!-- not run: REASON -->` is not run anywhere by this file, and says why; one preceded by
`<!-- run by: tests/FILE.py::TEST -->` runs in that test. A `python` block must name the test that runs it.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
MARK = re.compile(r"^<!-- (not run|run by): (\S.*?) -->$")
LANGUAGES = ("bash", "python", "text")
COMMAND_WORDS = ("python", "agff-run", "agff-serve", "pip", "torchrun", "curl")


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    text: str
    mark: str | None  # "not run" or "run by"
    reason: str | None

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for fence in FENCE.finditer(text):
        before = [line for line in text[: fence.start()].splitlines() if line.strip()]
        mark = MARK.match(before[-1]) if before else None
        found.append(
            Block(
                str(path.relative_to(REPO)),
                text.count("\n", 0, fence.start()) + 1,
                fence.group(1),
                fence.group(2),
                mark.group(1) if mark else None,
                mark.group(2) if mark else None,
            )
        )
    return found


BLOCKS = [block for path in DOCUMENTS for block in _blocks(path)]
RUN_HERE = [block for block in BLOCKS if block.language == "bash" and block.mark is None]


def test_the_readme_and_the_manual_hold_blocks_that_run_here():
    assert len(DOCUMENTS) > 5
    assert {block.document for block in RUN_HERE} >= {"README.md", "docs/runtime.md"}


def test_every_block_names_its_language():
    assert [block.name for block in BLOCKS if block.language not in LANGUAGES] == []


def test_every_python_block_names_the_test_that_runs_it():
    assert [block.name for block in BLOCKS if block.language == "python" and block.mark != "run by"] == []


def test_every_run_by_mark_names_a_test_that_exists():
    missing = []
    for block in BLOCKS:
        if block.mark == "run by":
            file, _, test = block.reason.partition("::")
            source = REPO / file
            if not source.is_file() or f"def {test}(" not in source.read_text():
                missing.append(f"{block.name}: {block.reason}")
    assert missing == []


def test_no_command_hides_in_an_indented_block_outside_the_fences():
    hidden = []
    for path in DOCUMENTS:
        outside = FENCE.sub("", path.read_text())
        hidden += [f"{path.name}: {line.strip()}" for line in outside.splitlines() if _indented_command(line)]
    assert hidden == []


def _indented_command(line: str) -> bool:
    return line.startswith("    ") and line.split()[0] in COMMAND_WORDS


@pytest.mark.parametrize("block", RUN_HERE, ids=[block.name for block in RUN_HERE])
def test_the_block_runs_as_written_on_the_tiny_bundle(block, tmp_path, tiny_bundle, tiny_checkpoint):
    (tmp_path / "bundle").symlink_to(tiny_bundle)
    (tmp_path / "ckpt").symlink_to(tiny_checkpoint)
    (tmp_path / "samples").symlink_to(REPO / "samples")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, PYTHONPATH=str(REPO))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
