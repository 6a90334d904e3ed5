import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime.index_segment as index_segment
from agff_deploy.errors import ArtifactError
from runtime.index import MAX_SEGMENTS, EmbeddingIndex
from runtime.scoring import fused_similarity


def unit(*shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def score(a, b):
    return fused_similarity(a, b, 0.05, 0.05, np.zeros(4, np.float32))


def files(folder, count, start=0):
    paths = []
    for i in range(start, start + count):
        paths.append(folder / f"{i}.jpg")
        paths[-1].write_bytes(bytes([i % 256]))
    return paths


def synthetic(count, start=0):
    return [{"path": f"/corpus/{i}.jpg", "given": "", "size": i, "mtime_ns": i} for i in range(start, start + count)]


def new_index(tmp_path, name="idx", model="m"):
    return EmbeddingIndex.open_or_create(tmp_path / name, model)


def committed(tmp_path, paths, embeddings, name="idx"):
    index = new_index(tmp_path, name)
    index.add(paths, embeddings)
    index.commit()
    return index


def fp16(x):
    return x.astype(np.float16).astype(np.float32)


def test_two_stage_search_equals_brute_force_when_the_shortlist_holds_everything(tmp_path):
    paths, embeddings = files(tmp_path, 50), unit(50, 3, 8)
    index = committed(tmp_path, paths, embeddings)
    query = unit(3, 8, seed=1)
    hits = EmbeddingIndex.load(index.folder).search(query, score, query_is_text=True, top_k=5, shortlist=50)
    brute = np.argsort(-score(fp16(embeddings), query[None])[:, 0])[:5]
    assert [p for p, _ in hits] == [str(paths[i].resolve()) for i in brute]


def test_the_shortlist_comes_from_global_embeddings(tmp_path):
    paths, embeddings = files(tmp_path, 20), unit(20, 3, 8)
    query = unit(3, 8, seed=2)
    embeddings[7, 0] = query[0]  # item 7 matches the query's global embedding exactly
    index = committed(tmp_path, paths, embeddings)
    hits = index.search(query, score, query_is_text=True, top_k=1, shortlist=1)
    assert hits[0][0] == str(paths[7].resolve())


def test_float16_storage_keeps_the_float32_top_ten(tmp_path):
    embeddings = unit(500, 3, 64)
    index = new_index(tmp_path)
    index.add_items(synthetic(500), embeddings)
    for seed in range(10):
        query = unit(3, 64, seed=100 + seed)
        hits = index.search_items(query, score, True, top_k=10, shortlist=500)
        exact = np.argsort(-score(embeddings, query[None])[:, 0])[:10]
        assert [item["path"] for item, _ in hits] == [f"/corpus/{i}.jpg" for i in exact]


def test_a_committed_index_loads_back_and_knows_what_is_stale(tmp_path):
    paths, embeddings = files(tmp_path, 3), unit(3, 3, 8)
    committed(tmp_path, paths, embeddings)
    again = EmbeddingIndex.load(tmp_path / "idx")
    stored = {item["path"]: vectors for item, vectors in again.live()}
    assert list(stored) == [str(p.resolve()) for p in paths]
    assert np.array_equal(np.stack(list(stored.values())), embeddings.astype(np.float16))
    paths[1].write_bytes(b"changed!")
    new = tmp_path / "new.jpg"
    new.write_bytes(b"n")
    assert again.stale(paths + [new]) == [paths[1], new]


def test_re_adding_a_changed_file_replaces_its_item(tmp_path):
    paths = files(tmp_path, 3)
    index = committed(tmp_path, paths, unit(3, 3, 8))
    replacement = unit(1, 3, 8, seed=9)
    index.add([paths[0]], replacement)
    index.commit()
    stored = {item["path"]: vectors for item, vectors in EmbeddingIndex.load(index.folder).live()}
    assert len(stored) == 3 and np.array_equal(stored[str(paths[0].resolve())], replacement[0].astype(np.float16))


def test_adding_writes_a_new_segment_and_leaves_the_committed_ones_untouched(tmp_path):
    index = new_index(tmp_path)
    index.add_items(synthetic(100), unit(100, 3, 8))
    index.commit()
    (first,) = [p for p in index.folder.iterdir() if p.name.startswith("segment-")]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.iterdir()}
    index.add_items(synthetic(10, start=100), unit(10, 3, 8, seed=1))
    index.commit()
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.iterdir()} == before
    assert len(EmbeddingIndex.load(index.folder)) == 110


def test_removed_items_are_never_found_again(tmp_path):
    embeddings = unit(30, 3, 8)
    index = new_index(tmp_path)
    index.add_items(synthetic(30), embeddings)
    assert index.remove(["/corpus/4.jpg", "/corpus/not-indexed.jpg"]) == 1
    index.commit()
    again = EmbeddingIndex.load(index.folder)
    hits = again.search_items(embeddings[4], score, True, top_k=30, shortlist=30)
    assert len(again) == 29 and "/corpus/4.jpg" not in [item["path"] for item, _ in hits]


def test_past_the_segment_limit_the_smallest_merge_and_every_item_survives(tmp_path):
    index = new_index(tmp_path)
    embeddings = unit(MAX_SEGMENTS + 3, 3, 8)
    for i in range(MAX_SEGMENTS + 3):
        index.add_items(synthetic(1, start=i), embeddings[i : i + 1])
        index.commit()
    index.remove(["/corpus/0.jpg"])
    index.commit()
    again = EmbeddingIndex.load(index.folder)
    stored = {item["path"]: vectors for item, vectors in again.live()}
    assert len(again.entries) <= MAX_SEGMENTS
    assert sorted(stored) == sorted(f"/corpus/{i}.jpg" for i in range(1, MAX_SEGMENTS + 3))
    assert all(np.array_equal(stored[f"/corpus/{i}.jpg"], embeddings[i].astype(np.float16)) for i in range(1, 11))
    assert sorted(p.name for p in index.folder.iterdir()) == sorted(again._named_files())


def test_a_large_segment_searches_an_ivf_index_that_finds_the_nearest_items(tmp_path, monkeypatch):
    monkeypatch.setattr(index_segment, "IVF_MIN_ROWS", 500)
    embeddings = unit(2000, 3, 16)
    index = new_index(tmp_path)
    index.add_items(synthetic(2000), embeddings)
    index.commit()
    again = EmbeddingIndex.load(index.folder)
    assert hasattr(again.segments[again.entries[0].name].global_index, "nlist")
    for i in (3, 777, 1999):
        item, _ = again.search_items(embeddings[i], score, True, top_k=1, shortlist=20)[0]
        assert item["path"] == f"/corpus/{i}.jpg"


def test_an_index_from_another_model_is_refused(tmp_path):
    committed(tmp_path, files(tmp_path, 1), unit(1, 3, 8))
    with pytest.raises(ArtifactError, match="built with another model"):
        EmbeddingIndex.open_or_create(tmp_path / "idx", "other")


def test_items_of_another_width_are_refused_naming_both(tmp_path):
    index = committed(tmp_path, files(tmp_path, 1), unit(1, 3, 8))
    with pytest.raises(ArtifactError, match="3 vectors of 8 dimensions; these have 3 of 16"):
        index.add_items(synthetic(1), unit(1, 3, 16))


def test_a_format_2_index_is_migrated_by_the_next_writer_and_refused_by_a_reader(tmp_path):
    paths, embeddings = files(tmp_path, 4), unit(4, 3, 8)
    old = tmp_path / "old"
    old.mkdir()
    np.save(old / "embeddings-1-00000000.npy", embeddings)
    items = [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in paths]
    meta = {"version": 2, "model_id": "m", "embeddings": "embeddings-1-00000000.npy", "items": items}
    (old / "items.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"agff-run index --index {old} --engine BUNDLE"):
        EmbeddingIndex.load(old)
    migrated = EmbeddingIndex.open_or_create(old, "m")
    assert [item["path"] for item in migrated.items()] == [i["path"] for i in items]
    assert not (old / "items.json").exists() and not (old / "embeddings-1-00000000.npy").exists()
    assert migrated.stale(paths) == []


class Killed(BaseException):
    """Stands in for SIGKILL inside one process: nothing after it runs."""


def dead_pid() -> int:
    """The id of a process that has exited, as a killed writer's would be."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_commit_killed_before_index_json_is_renamed_leaves_the_previous_index(tmp_path, monkeypatch):
    paths = files(tmp_path, 3)
    index = committed(tmp_path, paths[:2], unit(2, 3, 8))
    before = list(EmbeddingIndex.load(index.folder).items())
    index.add([paths[0], paths[2]], unit(2, 3, 8, seed=1))  # one changed file, one new
    rename = os.replace

    def killed_at_the_commit(src, dst):
        if Path(dst).name == "index.json":
            raise Killed
        rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_commit)
    with pytest.raises(Killed):
        index.commit()
    monkeypatch.undo()
    assert list(EmbeddingIndex.load(index.folder).items()) == before


def test_the_next_writer_removes_the_files_a_killed_writer_left(tmp_path):
    index = committed(tmp_path, files(tmp_path, 1), unit(1, 3, 8))
    kept = sorted(p.name for p in index.folder.iterdir())
    pid = dead_pid()
    (index.folder / f"segment-{pid}-0a1b2c3d").mkdir()
    (index.folder / f"segment-{pid}-0a1b2c3d" / "vectors.npy").write_bytes(b"half-written")
    for name in (f".index.json.tmp-{pid}", f"deleted-{pid}-0a1b2c3d.npy", f".deleted-{pid}-0a1b2c3d.npy.tmp-{pid}"):
        (index.folder / name).write_bytes(b"half-written")
    (index.folder / "notes.txt").write_text("the user's own file")
    reopened = EmbeddingIndex.open_or_create(index.folder, "m")
    assert len(reopened) == 1
    assert sorted(p.name for p in index.folder.iterdir()) == sorted(kept + ["notes.txt"])


def test_the_next_writer_keeps_the_files_of_a_writer_still_running(tmp_path):
    index = committed(tmp_path, files(tmp_path, 1), unit(1, 3, 8))
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        busy = index.folder / f"segment-{writer.pid}-0a1b2c3d"
        busy.mkdir()
        EmbeddingIndex.open_or_create(index.folder, "m")
        writer.kill()
    assert busy.exists()


def test_search_shows_each_path_as_it_was_given_at_index_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    index = committed(tmp_path, files(Path("photos"), 3), unit(3, 3, 8))
    hits = index.search(unit(3, 8, seed=1), score, query_is_text=True, top_k=3, shortlist=3)
    assert sorted(path for path, _ in hits) == ["photos/0.jpg", "photos/1.jpg", "photos/2.jpg"]


def test_search_shows_absolute_paths_where_the_given_ones_no_longer_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    index = committed(tmp_path, files(Path("photos"), 1), unit(1, 3, 8))
    monkeypatch.chdir(tmp_path / "photos")
    hits = index.search(unit(3, 8, seed=1), score, query_is_text=True)
    assert hits[0][0] == str((tmp_path / "photos" / "0.jpg").resolve())
