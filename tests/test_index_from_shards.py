"""`agff-run index --from-shards`: an index built straight from embed-corpus's Parquet shards, no model run."""

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from runtime.cli import main
from runtime.corpus_shards import ShardModel, ShardRows, rows_table, write_shard
from runtime.index import EmbeddingIndex

MODEL = ShardModel("a" * 64, 3, 8)


def shard(folder, seq, start, count, model=MODEL, failed=()):
    vectors = np.random.default_rng(seq).normal(size=(count, model.vectors, model.dimensions)).astype(np.float32)
    ids = [f"/corpus/{i}.jpg" for i in range(start, start + count)]
    errors = ["not an image" if i in failed else None for i in range(start, start + count)]
    rows = ShardRows(ids, [f"corpus/{i}.jpg" for i in range(start, start + count)], list(range(count)),
                     list(range(count)), vectors, errors)  # fmt: skip
    write_shard(folder, seq, model, rows_table(model, rows))
    return dict(zip(ids, vectors, strict=True))


def index_from(shards, index, *extra):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["index", "--from-shards", str(shards), "--index", str(index), "--json", *extra])
    return code, (json.loads(out.getvalue()) if out.getvalue() else None), err.getvalue()


def test_an_index_from_shards_holds_every_embedded_item_and_none_that_failed(tmp_path):
    vectors = shard(tmp_path / "shards", 1, 0, 5, failed=(3,)) | shard(tmp_path / "shards", 2, 5, 4)
    code, summary, _ = index_from(tmp_path / "shards", tmp_path / "idx")
    stored = {item["path"]: v for item, v in EmbeddingIndex.load(tmp_path / "idx").live()}
    assert code == 0 and summary["added"] == 8 and sorted(stored) == sorted(set(vectors) - {"/corpus/3.jpg"})
    assert all(np.array_equal(stored[i], vectors[i].astype(np.float16)) for i in stored)


def test_shards_indexed_again_add_only_what_is_new(tmp_path):
    shard(tmp_path / "shards", 1, 0, 5)
    index_from(tmp_path / "shards", tmp_path / "idx")
    shard(tmp_path / "shards", 2, 5, 2)
    code, summary, _ = index_from(tmp_path / "shards", tmp_path / "idx")
    assert code == 0 and summary["added"] == 2 and summary["items"] == 7


def test_shards_of_another_model_are_refused_naming_both(tmp_path):
    shard(tmp_path / "shards", 1, 0, 2)
    index_from(tmp_path / "shards", tmp_path / "idx")
    shard(tmp_path / "other", 1, 0, 2, model=ShardModel("b" * 64, 3, 8))
    code, _, err = index_from(tmp_path / "other", tmp_path / "idx")
    assert code == 2 and "built with another model" in err and "aaaaaaaaaaaa" in err and "bbbbbbbbbbbb" in err


@pytest.mark.parametrize("extra", [[], ["photos/"]], ids=["no shards", "inputs beside --from-shards"])
def test_a_shard_folder_without_shards_or_with_inputs_is_refused_in_one_line(tmp_path, extra):
    (tmp_path / "shards").mkdir()
    code, _, err = index_from(tmp_path / "shards", tmp_path / "idx", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--from-shards" in err
