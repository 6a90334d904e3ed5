"""`agff-run embed-corpus` on a local Ray with the tiny bundle: the shards hold what the `Embedder` computes, every
bad item is recorded with its reason, and neither a rerun nor a SIGKILL then a rerun ever embeds an item twice.

Most runs share this test process's Ray (`run_embed_corpus` uses a Ray that is up already); the kill and the
unreachable cluster run the command as users do, in a process of its own.
"""

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

from runtime.cli import main
from runtime.corpus_shards import ShardModel, ShardRows, read_shards, rows_table, shard_files, table_rows, write_shard
from runtime.embedder import Embedder

ray = pytest.importorskip("ray")

GOOD = ("astronaut", "coffee", "chelsea", "camera")
BAD_REASONS = {
    "cut.jpg": "unreadable or truncated image",
    "notes.jpg": "not an image Pillow can read",
    "gone.jpg": "no such file",
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """photos/ (four good photos), bad/ (a truncated JPEG and a text file named .jpg) and list.txt naming them all,
    a vanished file, and astronaut.jpg a second time under another spelling."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "photos").mkdir()
    (root / "bad").mkdir()
    for name in GOOD:
        photo = Image.fromarray(getattr(data, name)())
        photo.thumbnail((96, 96))
        photo.save(root / "photos" / f"{name}.jpg")
    (root / "bad" / "cut.jpg").write_bytes((root / "photos" / "astronaut.jpg").read_bytes()[:600])
    (root / "bad" / "notes.jpg").write_text("this is not an image")
    listed = [f"photos/{n}.jpg" for n in GOOD] + ["bad/cut.jpg", "bad/notes.jpg", "bad/gone.jpg"]
    (root / "list.txt").write_text("\n".join([*listed, "./photos/../photos/astronaut.jpg", ""]))
    return root


def embed_corpus(*args) -> tuple[int, dict, str]:
    """The command in this process: (exit status, its JSON summary, its stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["embed-corpus", *map(str, args), "--quiet"])
    return code, json.loads(out.getvalue()) if out.getvalue() else {}, err.getvalue()


def end_process_group(leader: int) -> None:
    """What a killed run's local Ray leaves running (its dashboard and runtime-env agents outlive the driver)."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass


def shard_rows(folder: Path) -> ShardRows:
    return table_rows(pa.concat_tables(read_shards(folder)))


@pytest.fixture(scope="module")
def first_run(local_ray, tiny_bundle, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    code, summary, err = embed_corpus(corpus / "list.txt", "--engine", tiny_bundle, "--out", out, "--shard-size", 3)
    return code, summary, err, out


def test_shards_hold_each_good_photo_with_the_embedders_own_embeddings(first_run, tiny_bundle, corpus):
    rows = shard_rows(first_run[3])
    embedded = [i for i, e in zip(rows.ids, rows.errors, strict=True) if e is None]
    assert sorted(embedded) == sorted(str((corpus / "photos" / f"{n}.jpg").resolve()) for n in GOOD)
    with Embedder.load(tiny_bundle) as embedder:
        expected = embedder.embed_images(embedded)
    got = rows.embeddings[[rows.ids.index(i) for i in embedded]]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_global_column_is_row_0_of_each_items_embeddings(first_run):
    table = pa.concat_tables(read_shards(first_run[3]))
    global_vectors = np.array(table.column("global").to_pylist(), np.float32)
    np.testing.assert_array_equal(global_vectors, table_rows(table).embeddings[:, 0])


def test_shard_metadata_names_the_model_and_the_embeddings_shape(first_run, tiny_bundle):
    model_id = Embedder.load(tiny_bundle).model_id
    meta = pq.read_schema(shard_files(first_run[3])[0]).metadata
    assert meta[b"agff.format"] == b"1" and meta[b"agff.model_id"] == model_id.encode()
    assert (int(meta[b"agff.vectors"]), int(meta[b"agff.dimensions"])) == (3, 32)  # the tiny preset's K+1, D


def test_shards_are_committed_every_shard_size_items(first_run):
    sizes = [pq.read_metadata(p).num_rows for p in shard_files(first_run[3])]
    assert sizes == [3, 3, 1]  # 7 items: four photos and three bad ones


def test_bad_items_are_recorded_with_their_reasons_and_the_rest_embedded(first_run):
    code, summary, err, out = first_run
    rows = shard_rows(out)
    reasons = {Path(p).name: e for p, e in zip(rows.paths, rows.errors, strict=True) if e is not None}
    assert set(reasons) == set(BAD_REASONS)
    for name, reason in BAD_REASONS.items():
        assert reason in reasons[name]
        assert f"error: bad/{name}: " in err
    assert (summary["embedded"], summary["failed"], code) == (4, 3, 1)


def test_a_vanished_file_has_no_size_or_mtime_and_nan_embeddings(first_run):
    rows = shard_rows(first_run[3])
    gone = rows.paths.index("bad/gone.jpg")
    assert (rows.sizes[gone], rows.mtimes[gone]) == (None, None)
    assert np.isnan(rows.embeddings[gone]).all()


def test_a_file_listed_twice_is_embedded_once_and_reported(first_run, corpus):
    code, summary, err, out = first_run
    ids = shard_rows(out).ids
    assert len(ids) == len(set(ids)) == 7
    assert "duplicate: ./photos/../photos/astronaut.jpg: the same file as photos/astronaut.jpg" in err
    assert summary["duplicates"] == 1


def test_a_rerun_embeds_nothing_new(first_run, tiny_bundle, corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run[3], out)
    before = shard_files(out)
    _, summary, _ = embed_corpus(corpus / "list.txt", "--engine", tiny_bundle, "--out", out)
    assert (summary["embedded"], summary["skipped_done"], summary["shards_written"]) == (0, 7, 0)
    assert shard_files(out) == before


def test_a_killed_writers_temporary_file_is_removed_and_never_read(local_ray, tiny_bundle, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".shard-000001-0123abcd.parquet.tmp-999999"
    leftover.write_bytes(b"half a shard")
    _, summary, _ = embed_corpus(corpus / "photos", "--engine", tiny_bundle, "--out", out)
    assert not leftover.exists()
    assert summary["items"] == 4


def test_a_parquet_table_of_paths_is_a_source(local_ray, tiny_bundle, corpus, tmp_path):
    table = corpus / "table.parquet"
    pq.write_table(pa.table({"path": [f"photos/{n}.jpg" for n in GOOD], "caption": list(GOOD)}), table)
    code, summary, _ = embed_corpus(table, "--engine", tiny_bundle, "--out", tmp_path / "out")
    assert (code, summary["embedded"]) == (0, 4)
    assert sorted(shard_rows(tmp_path / "out").paths) == sorted(f"photos/{n}.jpg" for n in GOOD)


def test_a_run_killed_with_sigkill_then_rerun_gives_every_item_exactly_once(local_ray, tiny_bundle, corpus, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    photo = (corpus / "photos" / "coffee.jpg").read_bytes()
    for i in range(300):
        (many / f"{i:03d}.jpg").write_bytes(photo)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime.cli", "embed-corpus", str(many), "--engine", str(tiny_bundle)]
    args = [*command, "--out", str(out), "--shard-size", "2", "--quiet"]
    run = subprocess.Popen(args, stderr=subprocess.DEVNULL, start_new_session=True)
    while not shard_files(out) and run.poll() is None:
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    end_process_group(run.pid)
    killed = len(shard_rows(out).ids)
    assert 0 < killed < 300, "the kill should land after the first shard and before the last"
    _, summary, _ = embed_corpus(many, "--engine", tiny_bundle, "--out", out)
    ids = shard_rows(out).ids
    assert sorted(ids) == sorted(str(p.resolve()) for p in many.iterdir())
    assert (summary["skipped_done"], summary["embedded"]) == (killed, 300 - killed)


def test_an_unreachable_cluster_is_one_line_exit_1_and_nothing_written(tiny_bundle, corpus, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime.cli", "embed-corpus", str(corpus / "photos"), "--engine"]
    args = [str(tiny_bundle), "--out", str(out), "--address", "127.0.0.1:1", "--connect-timeout", "2"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: --address 127.0.0.1:1: no Ray cluster answers there")
    assert not out.exists()


def test_shards_of_another_model_are_refused_naming_both(tiny_bundle, corpus, tmp_path):
    other = ShardModel("f" * 64, 3, 32)
    rows = ShardRows(["/x.jpg"], ["x.jpg"], [1], [1], np.zeros((1, 3, 32), np.float32), [None])
    write_shard(tmp_path, 1, other, rows_table(other, rows))
    code, _, err = embed_corpus(corpus / "photos", "--engine", tiny_bundle, "--out", tmp_path)
    assert code == 2
    assert err.count("\n") == 1 and "model ffffffffffff…" in err and "not of model " in err
    assert len(shard_files(tmp_path)) == 1


def test_a_shard_reads_back_what_was_written_with_nan_embeddings_for_errors(tmp_path):
    model = ShardModel("a" * 64, 2, 4)
    embeddings = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    errors = [None, "gone", None]
    rows = ShardRows(["/a", "/b", "/c"], ["a", "b", "c"], [1, None, 3], [10, None, 30], embeddings, errors)
    write_shard(tmp_path, 7, model, rows_table(model, rows))
    back = shard_rows(tmp_path)
    assert (back.ids, back.sizes, back.mtimes, back.errors) == (rows.ids, rows.sizes, rows.mtimes, rows.errors)
    np.testing.assert_array_equal(back.embeddings[[0, 2]], embeddings[[0, 2]])
    assert np.isnan(back.embeddings[1]).all()
    assert shard_files(tmp_path)[0].name.startswith("shard-000007-")
