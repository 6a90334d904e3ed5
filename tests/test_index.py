import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.index import EmbeddingIndex
from runtime.scoring import fused_similarity


def unit(*shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def score(a, b):
    return fused_similarity(a, b, 0.05, 0.05, np.zeros(4, np.float32))


def files(folder, count):
    paths = []
    for i in range(count):
        paths.append(folder / f"{i}.jpg")
        paths[-1].write_bytes(bytes([i]))
    return paths


def test_two_stage_search_equals_brute_force_when_the_shortlist_holds_everything(tmp_path):
    paths = files(tmp_path, 50)
    index = EmbeddingIndex("m")
    index.add(paths, unit(50, 3, 8))
    query = unit(3, 8, seed=1)
    hits = index.search(query, score, query_is_text=True, top_k=5, shortlist=50)
    brute = np.argsort(-score(index.embeddings, query[None])[:, 0])[:5]
    assert [p for p, _ in hits] == [index.items[i]["path"] for i in brute]


def test_the_shortlist_comes_from_global_embeddings(tmp_path):
    paths = files(tmp_path, 20)
    embeddings = unit(20, 3, 8)
    query = unit(3, 8, seed=2)
    embeddings[7, 0] = query[0]  # item 7 matches the query's global embedding exactly
    index = EmbeddingIndex("m")
    index.add(paths, embeddings)
    hits = index.search(query, score, query_is_text=True, top_k=1, shortlist=1)
    assert hits[0][0] == str(paths[7].resolve())


def test_saved_index_loads_back_and_knows_what_is_stale(tmp_path):
    paths = files(tmp_path, 3)
    index = EmbeddingIndex("m")
    index.add(paths, unit(3, 3, 8))
    index.save(tmp_path / "idx")
    again = EmbeddingIndex.load(tmp_path / "idx")
    assert again.items == index.items and np.array_equal(again.embeddings, index.embeddings)
    paths[1].write_bytes(b"changed!")
    new = tmp_path / "new.jpg"
    new.write_bytes(b"n")
    assert again.stale(paths + [new]) == [paths[1], new]


def test_re_adding_a_changed_file_replaces_its_row(tmp_path):
    paths = files(tmp_path, 3)
    index = EmbeddingIndex("m")
    index.add(paths, unit(3, 3, 8))
    replacement = unit(1, 3, 8, seed=9)
    index.add([paths[0]], replacement)
    assert len(index) == 3 and np.array_equal(index.embeddings[-1], replacement[0])


def test_an_index_from_another_model_is_refused(tmp_path):
    index = EmbeddingIndex("aaaa")
    index.add(files(tmp_path, 1), unit(1, 3, 8))
    index.save(tmp_path / "idx")
    with pytest.raises(ValueError, match="built with another model"):
        EmbeddingIndex.open_or_create(tmp_path / "idx", "bbbb")


class Killed(BaseException):
    """Stands in for SIGKILL inside one process: nothing after it runs."""


def dead_pid() -> int:
    """The id of a process that has exited, as a killed writer's would be."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_save_killed_before_items_json_is_renamed_leaves_the_previous_index(tmp_path, monkeypatch):
    paths = files(tmp_path, 3)
    index = EmbeddingIndex("m")
    index.add(paths[:2], unit(2, 3, 8))
    index.save(tmp_path / "idx")
    before = EmbeddingIndex.load(tmp_path / "idx")
    index.add([paths[0], paths[2]], unit(2, 3, 8, seed=1))  # one changed file, one new: the row count changes
    rename = os.replace

    def killed_at_the_commit(src, dst):
        if Path(dst).name == "items.json":
            raise Killed
        rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_commit)
    with pytest.raises(Killed):
        index.save(tmp_path / "idx")
    monkeypatch.undo()
    after = EmbeddingIndex.load(tmp_path / "idx")
    assert after.items == before.items and np.array_equal(after.embeddings, before.embeddings)


def test_the_next_writer_removes_the_files_a_killed_writer_left(tmp_path):
    index = EmbeddingIndex("m")
    index.add(files(tmp_path, 1), unit(1, 3, 8))
    index.save(tmp_path / "idx")
    kept = sorted(p.name for p in (tmp_path / "idx").iterdir())
    pid = dead_pid()
    for name in (
        f".items.json.tmp-{pid}",
        f".embeddings-{pid}-0a1b2c3d.npy.tmp-{pid}",
        f"embeddings-{pid}-0a1b2c3d.npy",
    ):
        (tmp_path / "idx" / name).write_bytes(b"half-written")
    reopened = EmbeddingIndex.open_or_create(tmp_path / "idx", "m")
    assert len(reopened) == 1
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == kept


def test_the_next_writer_keeps_the_temp_files_of_a_writer_still_running(tmp_path):
    index = EmbeddingIndex("m")
    index.add(files(tmp_path, 1), unit(1, 3, 8))
    index.save(tmp_path / "idx")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        busy = tmp_path / "idx" / f".items.json.tmp-{writer.pid}"
        busy.write_bytes(b"being written")
        EmbeddingIndex.open_or_create(tmp_path / "idx", "m")
        writer.kill()
    assert busy.exists()


def test_search_shows_each_path_as_it_was_given_at_index_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    index = EmbeddingIndex("m")
    index.add(files(Path("photos"), 3), unit(3, 3, 8))
    hits = index.search(unit(3, 8, seed=1), score, query_is_text=True, top_k=3, shortlist=3)
    assert sorted(path for path, _ in hits) == ["photos/0.jpg", "photos/1.jpg", "photos/2.jpg"]


def test_search_shows_absolute_paths_where_the_given_ones_no_longer_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    index = EmbeddingIndex("m")
    index.add(files(Path("photos"), 1), unit(1, 3, 8))
    monkeypatch.chdir(tmp_path / "photos")
    hits = index.search(unit(3, 8, seed=1), score, query_is_text=True)
    assert hits[0][0] == str((tmp_path / "photos" / "0.jpg").resolve())
