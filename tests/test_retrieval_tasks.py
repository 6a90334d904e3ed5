"""Retrieval with a single-vector embedder: queries embedded under a task instruction, documents under the default,
through `Embedder`, `agff-run` and `agff-serve`, equal transformers' pipeline with those instructions within 1e-4,
for Qwen3-VL-Embedding's convention and GME's; and what a task given where it does not belong does."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from agff_deploy.errors import InputError
from agff_deploy.tokenization import NO_TASK
from runtime.embedder import Embedder
from serve.embedder_model import EmbeddingService
from serve.request_items import RequestError
from tests import test_qwen3_vl_embedding as qwen3
from tests import test_single_vector as gme
from tests.conftest import export_single_vector

REPO = Path(__file__).resolve().parents[1]
BAR = 1e-4
QUERIES = ["a cup of coffee on a saucer", "a cat", "an astronaut in a white suit beside a flag"]
TASK = "Retrieve images that match the given text"  # Qwen3-VL-Embedding adds the full stop; GME takes it as written
processor_check_off = qwen3.processor_check_off


@pytest.fixture(scope="module")
def qwen3_bundle(tiny_qwen3_embedding):
    return tiny_qwen3_embedding


@pytest.fixture(scope="module")
def gme_bundle(tmp_path_factory):
    folder = gme.write_published(tmp_path_factory.mktemp("gme") / "qwen2-vl")
    return folder, export_single_vector(folder, folder.parent / "bundle")


@pytest.fixture(scope="module")
def photos():
    return [Image.fromarray(data.coffee()), Image.fromarray(data.chelsea()[:, :150]), Image.fromarray(data.astronaut())]


def test_qwen3_vl_embedding_queries_under_a_task_and_documents_under_the_default_equal_transformers(
    qwen3_bundle, tiny_qwen3_base, photos, processor_check_off
):
    with Embedder.load(qwen3_bundle) as model:
        queries, documents = model.embed_texts(QUERIES, task=TASK), model.embed_images(photos)
    expected = qwen3.transformers_pipeline(tiny_qwen3_base, QUERIES, instruction=TASK)
    assert np.abs(queries[:, 0] - expected).max() <= BAR
    assert np.abs(documents[:, 0] - qwen3.transformers_pipeline(tiny_qwen3_base, [None] * 3, photos)).max() <= BAR


def test_a_task_per_item_is_each_items_own(qwen3_bundle, tiny_qwen3_base, processor_check_off):
    tasks = [TASK, None, "Find the caption of this photo."]
    with Embedder.load(qwen3_bundle) as model:
        mixed = model.embed_texts(QUERIES, task=tasks)
    for row, (query, task) in enumerate(zip(QUERIES, tasks, strict=True)):
        instruction = qwen3.CONVENTION.system_prompt if task is None else task
        expected = qwen3.transformers_pipeline(tiny_qwen3_base, [query], instruction=instruction)
        assert np.abs(mixed[row, 0] - expected[0]).max() <= BAR, row


def test_gme_queries_under_a_task_equal_transformers(gme_bundle, monkeypatch):
    folder, bundle = gme_bundle
    with Embedder.load(bundle) as model:
        queries = model.embed_texts(QUERIES, task=TASK)
    monkeypatch.setattr(gme, "INSTRUCTION", TASK)  # the system turn GME's script writes
    assert np.abs(queries[:, 0] - gme.transformers_pipeline(folder, QUERIES)).max() <= BAR


def test_agff_run_embeds_queries_under_its_task(qwen3_bundle, tiny_qwen3_base, tmp_path, processor_check_off):
    out = tmp_path / "queries.npy"
    command = [sys.executable, "-m", "runtime.cli", "--engine", str(qwen3_bundle), "--text", *QUERIES, "--task", TASK]
    result = subprocess.run([*command, "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = qwen3.transformers_pipeline(tiny_qwen3_base, QUERIES, instruction=TASK)
    assert np.abs(np.load(out)[:, 0] - expected).max() <= BAR


def test_agff_serve_embeds_queries_under_their_task(qwen3_bundle, tiny_qwen3_base, tmp_path, processor_check_off):
    pytest.importorskip("pytriton", reason="agff-serve needs the serve extra: pip install -e '.[cpu,serve]'")
    from tests.test_serve import start_agff_serve, stop

    served = start_agff_serve(qwen3_bundle, tmp_path / "models")
    try:
        with served.client() as client:
            queries = client.embed_texts(QUERIES, task=TASK)
    finally:
        stop(served)
    expected = qwen3.transformers_pipeline(tiny_qwen3_base, QUERIES, instruction=TASK)
    assert np.abs(queries[:, 0] - expected).max() <= BAR


def test_a_task_longer_than_the_text_limit_is_cut_with_one_warning(gme_bundle):
    long = " ".join(["find the picture of a red circle"] * 200)
    with Embedder.load(gme_bundle[1]) as model, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, again = (model.embed_texts(QUERIES[:2], task=long) for _ in range(2))
        tokenizer = model.formatter.tokenizer
        kept = tokenizer.decode(tokenizer.encode(long, add_special_tokens=False).ids[:512])
        cut = model.embed_texts(QUERIES[:2], task=kept)
    assert [str(w.message) for w in caught] == [f"task {long[:40]!r}: longer than 512 tokens, truncated"]
    assert np.array_equal(first, again) and np.abs(first - cut).max() <= 1e-6


def test_a_task_given_to_an_agff_model_says_where_its_instruction_goes(tiny_bundle):
    with Embedder.load(tiny_bundle) as model, pytest.raises(InputError) as caught:
        model.embed_texts(["a red circle"], task=TASK)
    assert str(caught.value) == NO_TASK


def test_agff_run_refuses_a_task_for_an_agff_model_in_one_line(tiny_bundle):
    command = [sys.executable, "-m", "runtime.cli", "--engine", str(tiny_bundle), "--text", "x", "--task", TASK]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {NO_TASK}"]


def test_a_served_task_for_an_agff_model_fails_only_its_request(tiny_bundle):
    with Embedder.load(tiny_bundle) as model:
        service = EmbeddingService(model)
        column = np.array([[b"a red circle"]], dtype=object)
        refused, served = service.texts([(column, np.array([[TASK.encode()]], dtype=object)), (column, None)])
    assert isinstance(refused, RequestError) and str(refused) == f"task: {NO_TASK}"
    assert served.shape == (1, 3, 32)


def test_the_manifest_records_where_the_task_goes(qwen3_bundle):
    task = json.loads((qwen3_bundle / "manifest.json").read_text())["tokenizer"]["task"]
    assert task == {
        "prefix": "<|im_start|>system\n",
        "suffix": "<|im_end|>\n<|im_start|>user\n",
        "default": "Represent the user's input.",
        "punctuate": True,
    }


def test_the_manuals_retrieval_example_runs_as_written(tmp_path, tiny_qwen3_embedding):
    mark = "<!-- run by: tests/test_retrieval_tasks.py::test_the_manuals_retrieval_example_runs_as_written -->"
    manual = (REPO / "docs" / "runtime.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", manual[manual.index(mark) :], re.S).group(1)
    (tmp_path / "qwen3-bundle").symlink_to(tiny_qwen3_embedding)
    (tmp_path / "samples").symlink_to(REPO / "samples")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
