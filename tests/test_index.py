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
