"""`agff-run index` killed with SIGKILL at any moment, then run again, ends with the index an uninterrupted run makes.

The index holds 50,000 stand-in items besides the real photos, so that a kill can land while the update looks
up, writes and commits beside a large committed segment.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from runtime.index import EmbeddingIndex

STAND_INS = 50_000


def index_command(bundle: Path, index: Path, *folders: Path) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", "index", *map(str, folders), "--engine", str(bundle)] + [
        "--index",
        str(index),
        "--quiet",
    ]


def run_index(bundle: Path, index: Path, *folders: Path) -> None:
    result = subprocess.run(index_command(bundle, index, *folders), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def add_stand_ins(folder: Path, count: int) -> None:
    """Items of files indexed elsewhere: a large committed segment the update must leave as it is.

    Saved by a process of its own, as every real writer is: the files of a writer still
    running (this test process) are never removed by the next one.
    """
    save = subprocess.run(
        [sys.executable, "-c", STAND_IN_WRITER, str(folder), str(count)], capture_output=True, text=True
    )
    assert save.returncode == 0, save.stderr


STAND_IN_WRITER = """
import sys
import numpy as np
from runtime.index import EmbeddingIndex
folder, count = sys.argv[1], int(sys.argv[2])
index = EmbeddingIndex.load(folder)
index = EmbeddingIndex.open_or_create(folder, index.model_id)
rows = np.random.default_rng(0).normal(size=(count, *index.shape)).astype(np.float32)
index.add_items([{"path": f"/elsewhere/{i}.jpg", "given": "", "size": i, "mtime_ns": i} for i in range(count)], rows)
index.commit()
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_bundle):
    """Photos, a large index of them, a new photo, and the index after an uninterrupted update with it."""
    root = tmp_path_factory.mktemp("kill")
    (root / "photos").mkdir()
    (root / "new").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(root / "photos" / f"{name}.jpg")
    Image.fromarray(data.rocket()).save(root / "new" / "rocket.jpg")
    run_index(tiny_bundle, root / "base", root / "photos")
    add_stand_ins(root / "base", STAND_INS)
    shutil.copytree(root / "base", root / "reference")
    run_index(tiny_bundle, root / "reference", root / "photos", root / "new")
    return root


def appears(fragment: str):
    """As soon as a new entry whose name holds `fragment` is in the index folder."""
    return lambda folder, before, record_inode: any(
        fragment in name and name not in before for name in os.listdir(folder)
    )


def index_json_replaced(folder: Path, before: set[str], record_inode: int) -> bool:
    try:
        return (folder / "index.json").stat().st_ino != record_inode
    except FileNotFoundError:
        return False


def kill_at(process: subprocess.Popen, folder: Path, moment) -> None:
    """SIGKILL `process` after `moment` seconds, or as soon as `moment(folder, entries before, index.json's inode)`
    holds."""
    if isinstance(moment, float):
        time.sleep(moment)
    else:
        before, record_inode = set(os.listdir(folder)), (folder / "index.json").stat().st_ino
        while process.poll() is None and not moment(folder, before, record_inode):
            pass
    process.kill()
    process.wait()


def contents(folder: Path) -> dict[str, tuple]:
    """Each item's key and vectors: what two indexes must agree on."""
    return {item["path"]: (item["size"], item["mtime_ns"], vectors.tobytes())
            for item, vectors in EmbeddingIndex.load(folder).live()}  # fmt: skip


@pytest.mark.parametrize(
    "moment",
    [0.3, 1.0, appears("segment-"), appears(".tmp-"), appears(".index.json.tmp-"), index_json_replaced],
    ids=[
        "during start-up",
        "while loading or embedding",
        "as the new segment appears",
        "as the first temporary file appears",
        "as the index.json temporary file appears",
        "just after index.json is replaced",
    ],
)
def test_a_killed_index_update_run_again_gives_the_uninterrupted_index(library, tiny_bundle, tmp_path, moment):
    index = tmp_path / "index"
    shutil.copytree(library / "base", index)
    command = index_command(tiny_bundle, index, library / "photos", library / "new")
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        kill_at(process, index, moment)
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert contents(index) == contents(library / "reference")
    names = sorted(p.name for p in index.iterdir())
    assert names == sorted(EmbeddingIndex.load(index)._named_files()), names
