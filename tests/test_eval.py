"""Evaluation: metrics on hand-checkable matrices, the synthetic benchmarks, and the real-benchmark loaders."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from agff_deploy.eval.__main__ import main, table
from agff_deploy.eval.evaluate import _item_scores, evaluate, mmeb, synthetic_global, synthetic_mmvp
from agff_deploy.eval.metrics import hit_at_1, mmvp_pair_correct, recall_at_k
from agff_deploy.eval.mmeb import META_TASKS, MMEBItem, Side, load_mmeb, meta_task
from agff_deploy.eval.mmvp_vlm import load_mmvp_vlm
from agff_deploy.eval.synthetic import MMVP_PATTERNS, global_retrieval_set, mmvp_pairs
from agff_deploy.provenance import KEYS
from runtime.embedder import Embedder
from train.evaluate import evaluate_held_out


def test_a_pair_counts_only_when_both_statements_choose_their_own_image():
    scores = np.array(
        [
            [[0.9, 0.1], [0.2, 0.8]],  # both right
            [[0.9, 0.1], [0.9, 0.8]],  # second statement picks the first image
            [[0.1, 0.9], [0.1, 0.9]],  # first statement wrong
        ]
    )
    assert mmvp_pair_correct(scores).tolist() == [True, False, False]


def test_recall_at_k_on_a_small_matrix():
    sim = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.3], [0.2, 0.8, 0.1]])
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert recall_at_k(sim, 3) == 1.0


def test_recall_is_one_when_every_positive_ranks_first_and_zero_until_k_reaches_it_when_it_ranks_last():
    count = 6
    assert [recall_at_k(np.eye(count), k) for k in (1, 5)] == [1.0, 1.0]
    assert [recall_at_k(-np.eye(count), k) for k in (1, 5, 6)] == [0.0, 0.0, 1.0]


def test_hit_at_1_counts_the_first_candidate_winning():
    assert hit_at_1([np.array([0.9, 0.1]), np.array([0.2, 0.3, 0.1]), np.array([0.5, 0.4])]) == pytest.approx(2 / 3)


def test_synthetic_mmvp_has_every_pattern_with_distinct_images_and_statements():
    pairs = mmvp_pairs(pairs_per_pattern=4, seed=1, size=56)
    assert [p.pattern for p in pairs] == [p for p in MMVP_PATTERNS for _ in range(4)]
    for pair in pairs:
        assert pair.statements[0] != pair.statements[1], pair
        assert not np.array_equal(*pair.images), pair.pattern


def test_pairs_differ_only_in_their_pattern():
    pairs = {p.pattern: p for p in mmvp_pairs(pairs_per_pattern=1, seed=2, size=56)}
    a, b = (set(s.split()) for s in pairs["orientation"].statements)
    assert a ^ b <= {"up", "down", "left", "right"}
    a, b = (set(s.replace(".", "").split()) for s in pairs["colour"].statements)
    assert len(a ^ b) == 2
    first, mirrored = pairs["viewpoint"].images
    assert np.array_equal(mirrored, first[:, ::-1])


class OneHotModel:
    """A stand-in embedder for a known set of images and texts: image i is the unit vector e_i, a text is the vector
    it was given. Scores are dot products, so every rank, and so every benchmark number, is known in advance."""

    def __init__(self, images, texts, size):
        self.images = {np.asarray(image).tobytes(): i for i, image in enumerate(images)}
        self.texts = texts
        self.spec = SimpleNamespace(image=SimpleNamespace(size=(size, size)))

    def embed_images(self, images, instructions=""):
        return np.eye(len(self.images), dtype=np.float32)[[self.images[np.asarray(i).tobytes()] for i in images], None]

    def embed_texts(self, texts):
        return np.stack([self.texts[t] for t in texts])[:, None].astype(np.float32)

    def score(self, queries, candidates):
        return queries[:, 0] @ candidates[:, 0].T


@pytest.mark.parametrize(
    ("caption_vector", "recall"),
    [
        (lambda eye, i: eye[i], {"R@1": 1.0, "R@5": 1.0}),  # each caption is its own image: perfect retrieval
        (lambda eye, i: eye[(i + 1) % len(eye)], {"R@1": 0.0, "R@5": 1.0}),  # each is the next image: ranked second
        (lambda eye, i: -eye[i], {"R@1": 0.0, "R@5": 0.0}),  # each is its image reversed: ranked last of 16
    ],
    ids=["perfect", "shifted", "reversed"],
)
def test_synthetic_global_recall_on_embeddings_whose_ranks_are_known(caption_vector, recall):
    images, captions = global_retrieval_set(16, seed=1, size=56)
    eye = np.eye(16)
    model = OneHotModel(images, {c: caption_vector(eye, i) for i, c in enumerate(captions)}, 56)
    result = synthetic_global(model, seed=1, count=16)
    assert result == {"items": 16, "image_to_text": recall, "text_to_image": recall}


@pytest.mark.parametrize(("swap", "accuracy"), [(0, 1.0), (1, 0.0)], ids=["own-image", "swapped"])
def test_synthetic_mmvp_scores_each_pattern_from_its_pairs(swap, accuracy):
    pairs = mmvp_pairs(pairs_per_pattern=2, seed=1, size=56)
    images = [image for pair in pairs for image in pair.images]
    eye = np.eye(len(images))
    statements = {s: eye[(2 * p + k) ^ swap] for p, pair in enumerate(pairs) for k, s in enumerate(pair.statements)}
    result = synthetic_mmvp(OneHotModel(images, statements, 56), seed=1, pairs_per_pattern=2)
    assert result == {"pairs": 18, "per_pattern": dict.fromkeys(MMVP_PATTERNS, accuracy), "mean": accuracy}


def test_synthetic_benchmarks_are_deterministic_per_seed_and_differ_across_seeds():
    assert mmvp_pairs(2, seed=3, size=56)[0].statements == mmvp_pairs(2, seed=3, size=56)[0].statements
    assert mmvp_pairs(2, seed=3, size=56)[0].statements != mmvp_pairs(2, seed=4, size=56)[0].statements
    _, captions = global_retrieval_set(64, seed=0, size=56)
    assert len(set(captions)) == 64


@pytest.fixture()
def mmvp_folder(tmp_path):
    tmp_path = tmp_path / "MMVP_VLM"
    rows = ["Question ID,Type,Statement"]
    for kind, first_id in (("Orientation and Direction", 1), ("Color and Appearance", 3)):
        folder = tmp_path / "MLLM_VLM Images" / kind
        folder.mkdir(parents=True)
        for i, colour in zip((first_id, first_id + 1), ("red", "blue"), strict=True):
            Image.new("RGB", (40, 40), colour).save(folder / f"{i}.jpg")
            rows.append(f"{i},{kind},the square is {colour}")
    (tmp_path / "Questions.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_mmvp_vlm_loader_pairs_consecutive_rows(mmvp_folder):
    pairs = load_mmvp_vlm(mmvp_folder)
    assert [p.pattern for p in pairs] == ["Orientation and Direction", "Color and Appearance"]
    assert pairs[1].statements == ("a photo of the square is red", "a photo of the square is blue")
    assert pairs[1].images[0] == mmvp_folder / "MLLM_VLM Images" / "Color and Appearance" / "3.jpg"


def test_mmvp_vlm_loader_names_a_missing_image(mmvp_folder):
    (mmvp_folder / "MLLM_VLM Images" / "Color and Appearance" / "4.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="4.jpg not found"):
        load_mmvp_vlm(mmvp_folder)


def test_mmvp_vlm_loader_rejects_rows_that_are_not_pairs(mmvp_folder):
    lines = (mmvp_folder / "Questions.csv").read_text().splitlines()
    (mmvp_folder / "Questions.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match="do not form a pair"):
        load_mmvp_vlm(mmvp_folder)


def test_mmvp_vlm_loader_needs_questions_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="Questions.csv not found"):
        load_mmvp_vlm(tmp_path)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_mmvp_vlm_loader_names_a_questions_file_that_is_not_utf8(mmvp_folder, encoding):
    questions = mmvp_folder / "Questions.csv"
    questions.write_bytes(questions.read_text().replace("red", "rouge foncé").encode(encoding))
    with pytest.raises(ValueError, match=r"MMVP_VLM/Questions.csv is not UTF-8 text .*save it as UTF-8 CSV"):
        load_mmvp_vlm(mmvp_folder)


def test_mmvp_vlm_loader_says_when_the_header_line_is_missing(mmvp_folder):
    questions = mmvp_folder / "Questions.csv"
    questions.write_text("\n".join(questions.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(ValueError, match=r"Questions.csv: the header line 'Question ID,Type,Statement' is missing"):
        load_mmvp_vlm(mmvp_folder)


def test_mmvp_vlm_loader_refuses_a_questions_file_without_statements(mmvp_folder):
    (mmvp_folder / "Questions.csv").write_text("Question ID,Type,Statement\n")
    with pytest.raises(ValueError, match="Questions.csv holds the header line but no statements"):
        load_mmvp_vlm(mmvp_folder)


def test_mmvp_table_sizes_the_pattern_column_to_the_longest_name():
    result = {"per_pattern": {"Structural Character": 0.5, "Color and Appearance": 0.25, "State": 1.0}, "mean": 0.5}
    lines = table("mmvp-vlm", result).splitlines()
    assert lines[1] == "Structural Character        50.0"
    assert {len(line) for line in lines} == {len(lines[1])}


@pytest.fixture()
def mmeb_folder(tmp_path):
    tmp_path = tmp_path / "MMEB"
    images = tmp_path / "images"
    images.mkdir(parents=True)
    for colour in ("red", "green", "blue"):
        Image.new("RGB", (40, 40), colour).save(images / f"{colour}.jpg")
    cls = tmp_path / "ImageNet-1K"
    cls.mkdir()
    rows = [
        {"qry_text": "<|image_1|> Represent the given image for classification", "qry_img_path": "images/red.jpg",
         "tgt_text": ["red", "green", "blue"], "tgt_img_path": ["", "", ""]},
        {"qry_text": "<|image_1|> Represent the given image for classification", "qry_img_path": "images/blue.jpg",
         "tgt_text": ["blue", "red", "green"], "tgt_img_path": ["", "", ""]},
    ]  # fmt: skip
    (cls / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t2i = tmp_path / "MSCOCO_t2i"
    t2i.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "qry_text": "Find me an everyday image that matches the given caption: green",
                    "qry_img_path": "",
                    "tgt_text": ["", ""],
                    "tgt_img_path": ["images/green.jpg", "images/red.jpg"],
                }
            ]  # fmt: skip
        ),
        t2i / "test.parquet",
    )
    return tmp_path


def test_mmeb_loader_reads_jsonl_and_parquet_subsets(mmeb_folder):
    subsets = load_mmeb(mmeb_folder)
    assert set(subsets) == {"ImageNet-1K", "MSCOCO_t2i"}
    item = subsets["ImageNet-1K"][0]
    assert item.query == Side("Represent the given image for classification", mmeb_folder / "images/red.jpg")
    assert [c.text for c in item.candidates] == ["red", "green", "blue"]
    assert subsets["MSCOCO_t2i"][0].candidates[0].image == mmeb_folder / "images/green.jpg"
    assert (meta_task("ImageNet-1K"), meta_task("MSCOCO_t2i"), meta_task("RefCOCO")) == (
        "classification",
        "retrieval",
        "grounding",
    )


def test_mmeb_loader_names_what_is_wrong(mmeb_folder):
    (mmeb_folder / "images" / "blue.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.jsonl:2: image 'images/blue.jpg' not found"):
        load_mmeb(mmeb_folder)
    (mmeb_folder / "ImageNet-1K" / "test.jsonl").write_text('{"qry_text": "x"}\n')
    with pytest.raises(ValueError, match=r"test.jsonl:1: missing field\(s\) qry_img_path, tgt_text, tgt_img_path"):
        load_mmeb(mmeb_folder)


class ColourModel:
    """A stand-in embedder whose global embedding is the colour named or shown: hit@1 is known in advance."""

    COLOURS = {"red": 0, "green": 1, "blue": 2}

    def _vec(self, colour):
        v = np.zeros((1, 3), np.float32)
        v[0, self.COLOURS[colour]] = 1
        return v

    def embed_images(self, images, instructions=""):
        return np.stack([self._vec(next(c for c in self.COLOURS if c in str(p))) for p in images])

    def embed_texts(self, texts):
        return np.stack([self._vec(next(c for c in self.COLOURS if c in t)) for t in texts])

    def score(self, queries, candidates):
        return queries[:, 0] @ candidates[:, 0].T


def test_mmeb_items_score_text_queries_against_image_candidates_image_side_first(mmeb_folder):
    subsets = load_mmeb(mmeb_folder)
    model = ColourModel()
    assert [int(np.argmax(_item_scores(model, i))) for i in subsets["ImageNet-1K"]] == [0, 0]
    assert int(np.argmax(_item_scores(model, subsets["MSCOCO_t2i"][0]))) == 0
    assert _item_scores(model, MMEBItem(Side("red", None), (Side("", mmeb_folder / "images/green.jpg"),))).shape == (1,)


def test_mmeb_loader_skips_what_the_hub_cli_git_and_jupyter_leave_in_the_folder(mmeb_folder):
    (mmeb_folder / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (mmeb_folder / ".git").mkdir()
    (mmeb_folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (mmeb_folder / ".ipynb_checkpoints").mkdir()
    (mmeb_folder / ".ipynb_checkpoints" / "test-checkpoint.jsonl").write_text("{}\n")
    assert set(load_mmeb(mmeb_folder)) == {"ImageNet-1K", "MSCOCO_t2i"}


def test_mmeb_loader_accepts_an_image_root_unzipped_inside_the_data_folder(mmeb_folder):
    root = mmeb_folder / "eval_images"
    root.mkdir()
    (mmeb_folder / "images").rename(root / "images")
    subsets = load_mmeb(mmeb_folder, root)
    assert set(subsets) == {"ImageNet-1K", "MSCOCO_t2i"}
    assert subsets["ImageNet-1K"][0].query.image == root / "images/red.jpg"


def test_mmeb_scores_are_vlm2vecs_36_subsets_in_four_meta_tasks():
    assert {task: len(names) for task, names in META_TASKS.items()} == {
        "classification": 10,
        "vqa": 10,
        "retrieval": 12,
        "grounding": 4,
    }
    assert len({name for names in META_TASKS.values() for name in names}) == 36
    assert meta_task("CIFAR-100") is None


def _add_subset(folder, name, rows):
    (folder / name).mkdir()
    (folder / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


WRONG_RED = {"qry_text": "<|image_1|> classify", "qry_img_path": "images/red.jpg", "tgt_text": ["green", "red"],
             "tgt_img_path": ["", ""]}  # fmt: skip


def test_mmeb_overall_leaves_out_subsets_outside_mmebs_score(mmeb_folder):
    _add_subset(mmeb_folder, "CIFAR-100", [WRONG_RED])
    result = mmeb(ColourModel(), mmeb_folder, None)
    assert result["per_subset"] == {"ImageNet-1K": 1.0, "MSCOCO_t2i": 1.0}
    assert result["outside_score"] == {"CIFAR-100": 0.0}
    assert result["per_meta_task"] == {"classification": 1.0, "retrieval": 1.0}
    assert result["overall"] == 1.0 and result["scored_subsets"] == 2


def test_mmeb_table_labels_subsets_outside_the_score(mmeb_folder):
    _add_subset(mmeb_folder, "CIFAR-100", [WRONG_RED])
    lines = table("mmeb", mmeb(ColourModel(), mmeb_folder, None)).splitlines()
    assert lines[-2].split() == ["overall", "(2", "of", "36", "MMEB", "subsets)", "100.0"]
    assert lines[-1].split() == ["CIFAR-100", "(outside", "MMEB's", "score)", "0.0"]


def test_an_mmeb_subset_without_rows_is_skipped_with_a_warning(mmeb_folder, capsys):
    _add_subset(mmeb_folder, "VOC2007", [])
    result = mmeb(ColourModel(), mmeb_folder, None)
    assert "VOC2007" not in result["per_subset"] and result["per_meta_task"]["classification"] == 1.0
    assert f"warning: MMEB subset {mmeb_folder / 'VOC2007'} has no rows; skipped" in capsys.readouterr().err
    json.dumps(result, allow_nan=False)


def test_training_reports_pair_accuracy_under_the_benchmarks_pattern_names(tiny_model, encoder):
    report = evaluate_held_out(tiny_model, encoder, num_pairs=32)
    assert {"orientation", "quantity", "text"} <= set(report.attribute_accuracy)
    assert set(report.attribute_accuracy) - set(MMVP_PATTERNS) == {"scene", "size"}
    assert any(line.split()[0] == "orientation" for line in report.lines())


def test_evaluate_runs_every_benchmark_through_the_runtime(tiny_bundle, mmvp_folder, mmeb_folder):
    mmvp = evaluate(tiny_bundle, "synthetic-mmvp", seed=1, pairs_per_pattern=3)
    assert set(mmvp["per_pattern"]) == set(MMVP_PATTERNS) and mmvp["pairs"] == 27
    assert {3 * a for a in mmvp["per_pattern"].values()} <= {0, 1, 2, 3}  # a fraction of its 3 pairs

    glob = evaluate(tiny_bundle, "synthetic-global", seed=1)
    with Embedder.load(tiny_bundle) as model:
        images, captions = global_retrieval_set(512, seed=1, size=model.spec.image.size[0])
        scores = model.score(model.embed_images(images), model.embed_texts(captions))
    own = np.arange(512)
    assert glob["image_to_text"]["R@1"] == pytest.approx(np.mean(scores.argmax(1) == own))
    assert glob["text_to_image"]["R@1"] == pytest.approx(np.mean(scores.argmax(0) == own))

    real = evaluate(tiny_bundle, "mmvp-vlm", data=mmvp_folder)
    assert set(real["per_pattern"]) == {"Orientation and Direction", "Color and Appearance"}
    assert set(real["per_pattern"].values()) <= {0.0, 1.0}  # one pair per pattern
    mmeb = evaluate(tiny_bundle, "mmeb", data=mmeb_folder)
    assert mmeb["per_subset"]["ImageNet-1K"] in (0.0, 0.5, 1.0) and mmeb["per_subset"]["MSCOCO_t2i"] in (0.0, 1.0)
    assert mmeb["per_meta_task"] == {
        "classification": mmeb["per_subset"]["ImageNet-1K"],
        "retrieval": mmeb["per_subset"]["MSCOCO_t2i"],
    }
    assert mmeb["overall"] == pytest.approx(np.mean(list(mmeb["per_subset"].values())))


def test_cli_prints_a_table_and_writes_json_and_a_chart(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "mmvp.json"
    assert main([str(tiny_bundle), "--bench", "synthetic-mmvp", "--pairs-per-pattern", "2", "--json", str(out)]) == 0
    assert "orientation" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["bench"] == "synthetic-mmvp" and set(KEYS) <= set(written)
    assert written["config"]["pairs_per_pattern"] == 2
    assert written["command"][:4] == ["python", "-m", "agff_deploy.eval", str(tiny_bundle)]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_real_benchmarks_need_their_folder(tiny_bundle, capsys):
    assert main([str(tiny_bundle), "--bench", "mmeb"]) == 2
    assert "--bench mmeb needs --data DIR" in capsys.readouterr().err
