"""agff-run end to end, as a subprocess, on real photos with the tiny ONNX bundle."""

import io
import json
import os
import pty
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from runtime.cli import write_output
from runtime.console import for_people


def agff_run(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    return result.returncode, summary, result.stderr


def agff_run_on_a_terminal(*args, cwd=None):
    """agff-run with its stdout on a pseudo-terminal, as when a person runs it: (status, what it showed)."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", *map(str, args)], stdout=follower, stderr=subprocess.DEVNULL, cwd=cwd
    ) as process:
        os.close(follower)
        shown = read_until_closed(leader)
    return process.returncode, shown.replace("\r\n", "\n")


def read_until_closed(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the program exited and the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


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
        "--engine", tiny_bundle / "fp32" / "language_encoder.onnx", photos / "coffee.png", "--quiet"
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
    assert summary.pop("images_per_s") > 0
    assert summary == {
        "index": str(index),
        "items": 5,
        "added": 1,
        "removed": 0,
        "skipped_unchanged": 4,
        "skipped_unsupported": 0,
        "failed": 0,
    }
    code, summary, _ = agff_run("search", "a red circle", "--engine", tiny_bundle, "--index", index, "--top-k", "3")
    assert code == 0 and summary["items"] == 5 and len(summary["results"]) == 3
    scores = [r["score"] for r in summary["results"]]
    assert scores == sorted(scores, reverse=True)


def test_a_file_gone_from_an_indexed_folder_leaves_the_index_on_its_next_update(tiny_bundle, photos, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    agff_run("index", folder, "--engine", tiny_bundle, "--index", tmp_path / "index", "--quiet")
    (folder / "chelsea.jpg").unlink()
    code, summary, _ = agff_run("index", folder, "--engine", tiny_bundle, "--index", tmp_path / "index", "--quiet")
    assert code == 0 and summary["removed"] == 1 and summary["items"] == 3
    _, found, _ = agff_run("search", "a cat", "--engine", tiny_bundle, "--index", tmp_path / "index", "--top-k", "9")
    assert str(folder / "chelsea.jpg") not in [r["path"] for r in found["results"]]


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


def test_a_dangling_symlink_with_an_image_name_is_an_error_naming_it(tiny_bundle, photos, tmp_path):
    shutil.copy(photos / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    code, summary, err = agff_run("--engine", tiny_bundle, tmp_path, "--quiet")
    assert code == 1 and summary["embedded"] == 1 and summary["failed"] == 1
    assert f"error: {tmp_path / 'gone.jpg'}: dangling symlink to {tmp_path / 'deleted.jpg'}" in err.splitlines()


def test_files_in_a_folder_that_are_not_images_are_counted_as_skipped(tiny_bundle, photos, tmp_path):
    shutil.copy(photos / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "README").write_text("no suffix")
    code, summary, err = agff_run("--engine", tiny_bundle, tmp_path, "--quiet")
    assert code == 0 and summary["embedded"] == 1 and summary["skipped_unsupported"] == 2
    assert err == ""


def test_verbose_names_each_skipped_file(tiny_bundle, photos, tmp_path):
    shutil.copy(photos / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    _, _, err = agff_run("--engine", tiny_bundle, tmp_path, "--quiet", "--verbose")
    assert err.splitlines() == [f"skipped: {tmp_path / 'notes.txt'}: not an image file name (.txt)"]


def test_index_counts_the_files_it_skipped(tiny_bundle, photos, tmp_path):
    shutil.copy(photos / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    code, summary, _ = agff_run("index", tmp_path, "--engine", tiny_bundle, "--index", tmp_path / "idx", "--quiet")
    assert code == 0 and summary["added"] == 1 and summary["skipped_unsupported"] == 1


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    ("stream", "json_flag", "expected"),
    [(Terminal(), False, True), (Terminal(), True, False), (io.StringIO(), False, False)],
    ids=["terminal", "terminal with --json", "pipe"],
)
def test_only_a_terminal_without_json_gets_the_human_summary(stream, json_flag, expected):
    assert for_people(stream, json_flag) is expected


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory, photos):
    """32 small photos and two bad files: more than any summary table shows."""
    folder = tmp_path_factory.mktemp("many")
    for i, photo in enumerate(sorted(photos.iterdir()) * 8):
        Image.open(photo).convert("RGB").resize((48, 48)).save(folder / f"{i:02d}.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    return folder


def test_a_terminal_gets_a_short_summary_and_a_ranked_table(tiny_bundle, many_photos):
    code, shown = agff_run_on_a_terminal("--engine", tiny_bundle, many_photos, "--query", "a red circle")
    lines = shown.splitlines()
    assert code == 1 and 8 <= len(lines) <= 15
    assert lines[0] == "embedded 32 of 34 inputs with onnxruntime; 2 failed"
    assert f"  {many_photos / 'empty.jpg'}: empty file" in lines
    assert "ranked by fused score (higher = closer) for 'a red circle':" in lines
    assert lines[-1] == "  ... and 27 more (--json lists all)"
    scores = [float(line.split()[1]) for line in lines if re.match(r"\s+\d+\s+-?\d\.\d{4}\s", line)]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)


def test_labels_on_a_terminal_are_a_table_most_confident_first(tiny_bundle, many_photos):
    _, shown = agff_run_on_a_terminal("--engine", tiny_bundle, many_photos, "--labels", "cat", "coffee")
    lines = shown.splitlines()
    start = lines.index("zero-shot labels, most confident first:")
    rows = lines[start + 1 : start + 6]
    probabilities = [float(row.split()[0].rstrip("%")) for row in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(row.split()[1] in ("cat", "coffee") for row in rows)
    assert lines[start + 6] == "  ... and 27 more (--json lists all)"


def test_json_flag_gives_the_json_summary_on_a_terminal(tiny_bundle, photos):
    _, shown = agff_run_on_a_terminal("--engine", tiny_bundle, photos / "coffee.png", "--json", "--quiet")
    assert json.loads(shown)["embedded"] == 1


def test_search_on_a_terminal_is_a_table_of_paths_and_scores(tiny_bundle, photos, tmp_path):
    shutil.copytree(photos, tmp_path / "photos")
    agff_run("index", "photos", "--engine", tiny_bundle, "--index", "idx", "--quiet", cwd=tmp_path)
    code, shown = agff_run_on_a_terminal(
        "search", "a red circle", "--engine", tiny_bundle, "--index", "idx", "--top-k", "2", cwd=tmp_path
    )
    lines = shown.splitlines()
    assert code == 0 and len(lines) == 3
    assert re.fullmatch(
        r"4 items searched in \d+\.\d+ ms; fused score \(higher = closer\) for 'a red circle':", lines[0]
    )
    assert all(re.fullmatch(r"\s+\d+\s+-?\d\.\d{4}\s+photos/\w+\.(jpg|png)", line) for line in lines[1:])


def test_warnings_and_errors_start_their_own_line_under_the_progress_bar(tiny_bundle, photos, bad_inputs):
    long = " ".join(["find the red circle and the blue square"] * 20)
    args = ["--engine", tiny_bundle, photos, bad_inputs / "empty.jpg", "--instruction", long, "--batch-size", "1"]
    result = subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True)
    err = result.stderr.decode()
    assert "embed: 100%" in err  # the progress bar was drawn
    messages = list(re.finditer(r"(error|warning): ", err))
    assert len(messages) == 2 and all(m.start() == 0 or err[m.start() - 1] in "\r\n" for m in messages)
    assert err.count("warning: instruction: longer than 48 tokens, truncated\n") == 1


def test_search_prints_paths_as_given_at_index_time_like_embed(tiny_bundle, photos, tmp_path):
    shutil.copytree(photos, tmp_path / "photos")
    agff_run("index", "photos", "--engine", tiny_bundle, "--index", "idx", "--quiet", cwd=tmp_path)
    _, embedded, _ = agff_run("--engine", tiny_bundle, "photos", "--quiet", cwd=tmp_path)
    _, found, _ = agff_run("search", "a red circle", "--engine", tiny_bundle, "--index", "idx", cwd=tmp_path)
    shown = sorted(r["path"] for r in found["results"])
    assert shown == sorted(i["path"] for i in embedded["image_items"])
    assert shown == ["photos/astronaut.jpg", "photos/camera.png", "photos/chelsea.jpg", "photos/coffee.png"]


def test_an_output_path_that_cannot_be_written_is_an_error_not_a_traceback(tiny_bundle, photos, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = agff_run("--engine", tiny_bundle, photos / "coffee.png", "--out", tmp_path / "file" / "e.npy")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and str(tmp_path / "file") in err
