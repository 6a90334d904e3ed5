"""agff-run end to end, as a subprocess, on real photos with the tiny ONNX bundle."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from runtime.cli import write_output


def agff_run(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    return result.returncode, summary, result.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(data.camera()).save(folder / "camera.png")
    return folder


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "cut.jpg").write_bytes((photos / "astronaut.jpg").read_bytes()[:4000])
    Image.new("L", (9000, 9000)).save(folder / "bomb.png")
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(data.astronaut()).save(folder / "good.jpg")
    return folder


def test_embeds_one_image_and_prints_a_json_summary(tiny_bundle, photos):
    code, summary, _ = agff_run("--engine", tiny_bundle, photos / "astronaut.jpg", "--quiet")
    assert code == 0
    assert summary["embedded"] == 1 and summary["failed"] == 0 and summary["backend"] == "onnxruntime"
    assert summary["image_items"][0]["path"] == str(photos / "astronaut.jpg")
    assert summary["image_items"][0]["norms"] == [1.0, 1.0, 1.0]


def test_engine_may_be_a_single_onnx_graph(tiny_bundle, photos):
    code, summary, _ = agff_run(
        "--engine", tiny_bundle / "fp32" / "image_encoder.onnx", photos / "coffee.png", "--quiet"
    )
    assert code == 0 and summary["embedded"] == 1


def test_a_folder_is_embedded_to_npy_atomically(tiny_bundle, photos, tmp_path):
    out = tmp_path / "emb.npy"
    code, summary, _ = agff_run("--engine", tiny_bundle, photos, "--out", out, "--batch-size", "3", "--quiet")
    assert code == 0 and summary["embedded"] == 4
    embeddings = np.load(out)
    assert embeddings.shape == (4, 3, 32)
    assert (tmp_path / "emb.npy.paths.txt").read_text().split() == sorted(str(p) for p in photos.iterdir())
    assert not list(tmp_path.glob(".*tmp*"))


def test_globs_and_jsonl_output_carry_each_path(tiny_bundle, photos, tmp_path):
    out = tmp_path / "emb.jsonl"
    code, summary, _ = agff_run("--engine", tiny_bundle, str(photos / "*.jpg"), "--out", out, "--quiet")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and [r["path"] for r in rows] == [str(photos / "astronaut.jpg"), str(photos / "chelsea.jpg")]
    assert np.asarray(rows[0]["embedding"]).shape == (3, 32)


def test_labels_classify_each_image(tiny_bundle, photos):
    code, summary, _ = agff_run("--engine", tiny_bundle, photos, "--labels", "cat", "coffee", "person", "--quiet")
    assert code == 0
    assert [r["path"] for r in summary["labels"]] == sorted(str(p) for p in photos.iterdir())
    assert all(r["label"] in ("cat", "coffee", "person") for r in summary["labels"])


def test_query_ranks_images_by_fused_score(tiny_bundle, photos):
    code, summary, _ = agff_run("--engine", tiny_bundle, photos, "--query", "a red circle", "--quiet")
    scores = [r["score"] for r in summary["ranking"]]
    assert code == 0 and len(scores) == 4 and scores == sorted(scores, reverse=True)


def test_texts_embed_and_long_ones_are_truncated_with_a_warning(tiny_bundle):
    long = " ".join(["a red circle and a blue square"] * 20)
    code, summary, err = agff_run("--engine", tiny_bundle, "--text", "a red circle", long)
    assert code == 0 and len(summary["text_items"]) == 2
    assert "warning: text 'a red circle and a blue square a red cir': longer than 48 tokens, truncated" in err


def test_bad_inputs_are_reported_one_line_each_and_the_batch_goes_on(tiny_bundle, bad_inputs):
    missing = bad_inputs / "missing.jpg"
    code, summary, err = agff_run("--engine", tiny_bundle, bad_inputs, missing, "--quiet")
    assert code == 1
    assert summary["embedded"] == 2 and summary["failed"] == 5  # good.jpg and the animated gif's first frame
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 5
    for name, reason in [
        ("empty.jpg", "empty file"),
        ("notes.jpg", "not an image Pillow can read"),
        ("cut.jpg", "unreadable or truncated image"),
        ("bomb.png", "possible decompression bomb"),
        ("missing.jpg", "no such file"),
    ]:
        assert any(name in line and reason in line for line in errors), name
    assert f"warning: {bad_inputs / 'anim.gif'}: has 2 frames; used the first" in err


def test_index_then_search_and_only_new_files_are_embedded(tiny_bundle, photos, tmp_path):
    index = tmp_path / "index"
    code, summary, _ = agff_run("index", photos, "--engine", tiny_bundle, "--index", index, "--quiet")
    assert code == 0 and summary["items"] == 4 and summary["added"] == 4
    extra = tmp_path / "more"
    extra.mkdir()
    Image.fromarray(data.rocket()).save(extra / "rocket.jpg")
    code, summary, _ = agff_run("index", photos, extra, "--engine", tiny_bundle, "--index", index, "--quiet")
    assert summary == {"index": str(index), "items": 5, "added": 1, "skipped_unchanged": 4, "failed": 0}
    code, summary, _ = agff_run("search", "a red circle", "--engine", tiny_bundle, "--index", index, "--top-k", "3")
    assert code == 0 and summary["items"] == 5 and len(summary["results"]) == 3
    scores = [r["score"] for r in summary["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_by_image_finds_that_image_first(tiny_bundle, photos, tmp_path):
    index = tmp_path / "index"
    agff_run("index", photos, "--engine", tiny_bundle, "--index", index, "--quiet")
    code, summary, _ = agff_run("search", "--image", photos / "chelsea.jpg", "--engine", tiny_bundle, "--index", index)
    assert code == 0 and summary["results"][0]["path"] == str(photos / "chelsea.jpg")


def test_a_missing_engine_is_an_error_with_status_2(tmp_path, photos):
    code, summary, err = agff_run("--engine", tmp_path / "nothing", photos / "astronaut.jpg")
    assert code == 2 and summary is None and "does not exist" in err


def test_a_failed_write_leaves_the_previous_output_intact(tmp_path):
    out = tmp_path / "emb.jsonl"
    out.write_text("previous\n")

    class Exploding(np.ndarray):
        def tolist(self):
            raise KeyboardInterrupt  # as if the process were stopped mid-write

    embeddings = np.zeros((2, 3, 4), np.float32).view(Exploding)
    with pytest.raises(KeyboardInterrupt):
        write_output(out, ["a", "b"], embeddings, "path")
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["emb.jsonl"]
