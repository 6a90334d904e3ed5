import json

import pytest
from PIL import Image

from agff_deploy.tokenization import IMAGE_PLACEHOLDER
from train.mmeb import read_mmeb


def write_rows(folder, rows, name="train.jsonl"):
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (20, 20), "red").save(images / "a.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


GOOD = {
    "qry": "<|image_1|>\nRepresent the given image.",
    "qry_image_path": "images/a.jpg",
    "pos_text": "a red square",
    "pos_image_path": "",
}


def test_rows_become_pairs_with_the_image_token_mapped(image_folder):
    pairs = read_mmeb(
        write_rows(image_folder, [GOOD, {"qry": "find a red square", "pos_text": "", "pos_image_path": "images/a.jpg"}])
    )
    assert pairs[0].query_text == IMAGE_PLACEHOLDER + "\nRepresent the given image."
    assert pairs[0].query_image == image_folder / "images/a.jpg" and pairs[0].pos_image is None
    assert pairs[1].query_image is None and pairs[1].pos_image == image_folder / "images/a.jpg"


def test_bad_rows_are_reported_with_their_line_and_skipped(image_folder, capsys):
    rows = [GOOD] * 20 + [
        dict(GOOD, qry_image_path="images/missing.jpg"),
        dict(GOOD, qry_image_path="images/broken.jpg"),
        dict(GOOD, pos_text=""),
        "{not json",
    ]
    path = write_rows(image_folder, rows)
    pairs = read_mmeb(path, max_bad_fraction=0.2)
    err = capsys.readouterr().err
    assert len(pairs) == 20
    assert f"{path}:21: skipped: qry_image_path 'images/missing.jpg': no such file" in err
    assert f"{path}:22: skipped: qry_image_path 'images/broken.jpg': unreadable image" in err
    assert f"{path}:23: skipped: pos_text is empty and there is no pos_image_path" in err
    assert f"{path}:24: skipped: not valid JSON" in err


def test_too_many_bad_rows_stop_the_read(image_folder):
    path = write_rows(image_folder, [GOOD, dict(GOOD, pos_text="")])
    with pytest.raises(ValueError, match="1 of 2 rows are bad, more than the allowed 5%"):
        read_mmeb(path)


def test_parquet_files_read_like_jsonl(image_folder):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = image_folder / "train.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, dict(GOOD, pos_text="a blue square")]), path)
    assert [p.pos_text for p in read_mmeb(path)] == ["a red square", "a blue square"]


def test_image_paths_resolve_against_the_given_image_root(tmp_path, image_folder):
    data = tmp_path / "elsewhere"
    data.mkdir()
    pairs = read_mmeb(write_rows(data, [GOOD]), image_root=image_folder)
    assert pairs[0].query_image == image_folder / "images/a.jpg"


def test_rows_with_an_image_the_runtime_would_refuse_are_skipped(image_folder, capsys):
    Image.new("L", (9000, 9000)).save(image_folder / "images" / "bomb.png")
    path = write_rows(image_folder, [GOOD] * 20 + [dict(GOOD, qry_image_path="images/bomb.png")])
    assert len(read_mmeb(path)) == 20
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{path}:21: skipped:")]
    assert len(skipped) == 1 and "9000x9000 is 81 MP, over the 64 MP cap" in skipped[0]
