"""`agff-run index` killed with SIGKILL at any moment, then run again, ends with the index an uninterrupted run makes.

The index is made large (50,000 stand-in rows besides the real photos) so that
saving it takes long enough for a kill to land while its files are written.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    """Rows for files indexed elsewhere: they make every save of this index write megabytes.

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
rows = np.random.default_rng(0).normal(size=(count, *index.embeddings.shape[1:])).astype(np.float32)
index.items += [{"path": f"/elsewhere/{i}.jpg", "size": i, "mtime_ns": i} for i in range(count)]
index.embeddings = np.concatenate([index.embeddings, rows])
index.save(folder)
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
    return lambda folder, items_inode: any(fragment in name for name in os.listdir(folder))


def items_json_replaced(folder: Path, items_inode: int) -> bool:
    try:
        return (folder / "items.json").stat().st_ino != items_inode
    except FileNotFoundError:
        return False


def kill_at(process: subprocess.Popen, folder: Path, moment) -> None:
    """SIGKILL `process` after `moment` seconds, or as soon as `moment(folder, items.json's inode)` holds."""
    if isinstance(moment, float):
        time.sleep(moment)
    else:
        items_inode = (folder / "items.json").stat().st_ino
        while process.poll() is None and not moment(folder, items_inode):
            pass
    process.kill()
    process.wait()


@pytest.mark.parametrize(
    "moment",
    [0.3, 1.0, appears(".tmp-"), appears(".items.json.tmp-"), items_json_replaced],
    ids=[
        "during start-up",
        "while loading or embedding",
        "as the first temporary file appears",
        "as the items.json temporary file appears",
        "just after items.json is replaced",
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
    updated, reference = EmbeddingIndex.load(index), EmbeddingIndex.load(library / "reference")
    assert updated.items == reference.items
    assert np.array_equal(updated.embeddings, reference.embeddings)
    names = sorted(p.name for p in index.iterdir())
    assert not [name for name in names if ".tmp-" in name] and len(names) == 2, names
