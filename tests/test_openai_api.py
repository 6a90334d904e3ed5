"""agff-serve's OpenAI-style API on a real server on loopback, called by the clients people use (the `openai`
client, LangChain's OpenAIEmbeddings, httpx): results equal the in-process Embedder's, and every bad request gets
its own error in OpenAI's shape while the server goes on answering everyone else."""

import base64
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_serve import PHOTOS, png, start_agff_serve, stop

openai = pytest.importorskip("openai", reason="the OpenAI-style API's tests need the dev extra")
httpx = pytest.importorskip("httpx")
langchain_openai = pytest.importorskip("langchain_openai")

KEY = "test-key-0123"
MODEL = "agff"  # the name docs/serving.md's snippets call
TEXTS = ["an astronaut", "a cup of coffee", "two blue squares"]
# The photos at 160 px: several fit the 1 MiB body limit the server is started with (a larger body tests 413).
PHOTOS = {name: np.asarray(Image.fromarray(photo).resize((160, 160))) for name, photo in PHOTOS.items()}


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    extra = ["--api-key", KEY, "--served-model-name", MODEL, "--max-body-mb", "1", "--max-items", "16"]
    served = start_agff_serve(tiny_bundle, tmp_path_factory.mktemp("openai") / "models", *extra)
    yield served
    if served.process.poll() is None:
        stop(served)


@pytest.fixture(scope="module")
def embedder(tiny_bundle):
    from runtime.embedder import Embedder

    with Embedder.load(tiny_bundle) as model:
        yield model


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{server.openai}/v1", api_key=KEY) as made:
        yield made


def post(server, path: str, body, key: str | None = KEY, content: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    url = f"http://127.0.0.1:{server.openai}{path}"
    if content is not None:
        return httpx.post(url, content=content, headers={**headers, "Content-Type": "application/json"}, timeout=60)
    return httpx.post(url, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("encoding_format", ["float", openai.NOT_GIVEN], ids=["float", "base64 (the client's)"])
def test_the_openai_client_gets_the_embedders_global_text_vectors(client, embedder, encoding_format):
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format=encoding_format)
    served = np.array([item.embedding for item in response.data], np.float32)
    np.testing.assert_array_equal(served, embedder.embed_texts(TEXTS)[:, 0])
    assert [item.index for item in response.data] == [0, 1, 2] and response.model == MODEL


def test_a_base64_vector_is_the_float32_bytes_of_the_float_one(server):
    floats, packed = (
        post(server, "/v1/embeddings", {"input": TEXTS[:1], "encoding_format": f}).json()["data"][0]["embedding"]
        for f in ("float", "base64")
    )
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(packed), "<f4"), np.array(floats, np.float32))


def test_usage_counts_the_tokens_the_model_read(client, embedder):
    response = client.embeddings.create(model=MODEL, input=TEXTS)
    expected = sum(len(embedder.formatter.item_ids(text, None)[0]) for text in TEXTS)
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected


def test_images_sent_as_data_uris_with_infinitys_modality_get_the_embedders_vectors(client, embedder):
    photos = list(PHOTOS.values())
    response = client.embeddings.create(
        model=MODEL, input=[data_uri(p) for p in photos], extra_body={"modality": "image"}
    )
    served = np.array([item.embedding for item in response.data], np.float32)
    np.testing.assert_allclose(served, embedder.embed_images(photos)[:, 0], rtol=0, atol=1e-6)


def test_a_vllm_style_conversation_is_one_image_item_with_its_instruction(client, embedder):
    photo, instruction = PHOTOS["coffee"], "what colour is the cup?"
    content = [{"type": "image_url", "image_url": {"url": data_uri(photo)}}, {"type": "text", "text": instruction}]
    response = client.post(
        "/embeddings",
        cast_to=openai.types.CreateEmbeddingResponse,
        body={"model": MODEL, "messages": [{"role": "user", "content": content}], "encoding_format": "float"},
    )
    expected = embedder.embed_images([photo], [instruction])[0, 0]
    np.testing.assert_allclose(np.array(response.data[0].embedding, np.float32), expected, rtol=0, atol=1e-6)


def test_all_vectors_come_back_in_embeddings_when_asked_for(server, embedder):
    body = {"input": TEXTS[:2], "vectors": "all", "encoding_format": "base64"}
    data = post(server, "/v1/embeddings", body).json()["data"]
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embeddings"]), "<f4") for d in data])
    expected = embedder.embed_texts(TEXTS[:2])
    np.testing.assert_array_equal(vectors.reshape(expected.shape), expected)


def test_langchains_openai_embeddings_get_the_embedders_vectors(server, embedder):
    model = langchain_openai.OpenAIEmbeddings(
        model=MODEL, base_url=f"http://127.0.0.1:{server.openai}/v1", api_key=KEY, check_embedding_ctx_length=False
    )
    expected = embedder.embed_texts(TEXTS)[:, 0]
    np.testing.assert_allclose(np.array(model.embed_documents(TEXTS)), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array(model.embed_query(TEXTS[0])), expected[0], rtol=0, atol=1e-6)


def test_rerank_of_images_by_a_text_query_is_the_fused_score_in_order(server, embedder):
    photos = list(PHOTOS.values())
    body = {"model": MODEL, "query": "an astronaut", "documents": [{"image": data_uri(p)} for p in photos],
            "top_n": 2, "return_documents": True}  # fmt: skip
    results = post(server, "/v1/rerank", body).json()["results"]
    expected = embedder.score(embedder.embed_images(photos), embedder.embed_texts(["an astronaut"]))[:, 0]
    assert [r["index"] for r in results] == list(np.argsort(-expected))
    np.testing.assert_allclose([r["relevance_score"] for r in results], np.sort(expected)[::-1], rtol=0, atol=1e-6)


def test_rerank_of_texts_by_an_image_query_keeps_top_n_and_returns_the_documents(server, embedder):
    body = {"query": {"image": data_uri(PHOTOS["astronaut"])}, "documents": TEXTS, "top_n": 1,
            "return_documents": True}  # fmt: skip
    (result,) = post(server, "/v1/rerank", body).json()["results"]
    expected = embedder.score(embedder.embed_images([PHOTOS["astronaut"]]), embedder.embed_texts(TEXTS))[0]
    assert result["index"] == int(np.argmax(expected)) and result["document"] == {"text": TEXTS[result["index"]]}
    assert result["relevance_score"] == pytest.approx(float(expected.max()), abs=1e-6)


def test_models_lists_the_bundle_with_its_dimensions_and_limits(client, embedder):
    (model,) = client.models.list().data
    _, vectors, dimensions = embedder.embed_texts(["x"]).shape
    card = model.model_dump()
    assert (model.id, card["dimensions"], card["vectors_per_item"]) == (MODEL, dimensions, vectors)
    assert (card["precision"], card["matryoshka"], card["max_items"]) == ("fp32", False, 16)


ERRORS = {
    "no key": (401, "invalid_api_key", lambda s: post(s, "/v1/embeddings", {"input": TEXTS}, key=None)),
    "wrong key": (401, "invalid_api_key", lambda s: post(s, "/v1/embeddings", {"input": TEXTS}, key="guess")),
    "over the body limit": (
        413, None, lambda s: post(s, "/v1/embeddings", None, content=json.dumps({"input": ["x" * (2 << 20)]}).encode())
    ),
    "not JSON": (400, None, lambda s: post(s, "/v1/embeddings", None, content=b"{input: ")),
    "an image that does not decode": (
        400, None, lambda s: post(s, "/v1/embeddings", {"input": ["data:image/png;base64,AAAA"], "modality": "image"})
    ),
    "a text over the token limit": (400, None, lambda s: post(s, "/v1/embeddings", {"input": ["word " * 2000]})),
    "an empty input": (400, None, lambda s: post(s, "/v1/embeddings", {"input": []})),
    "dimensions an AGFF bundle cannot give": (
        400, None, lambda s: post(s, "/v1/embeddings", {"input": TEXTS, "dimensions": 8})
    ),
    "a URL to fetch": (
        400, None, lambda s: post(s, "/v1/embeddings", {"input": ["http://10.0.0.1/a.png"], "modality": "image"})
    ),
    "another model": (404, "model_not_found", lambda s: post(s, "/v1/embeddings", {"input": TEXTS, "model": "gpt"})),
}  # fmt: skip
PARAMS = {
    "an image that does not decode": "input[0]",
    "a text over the token limit": "input[0]",
    "an empty input": "input",
    "dimensions an AGFF bundle cannot give": "dimensions",
    "a URL to fetch": "input[0]",
}


@pytest.mark.parametrize("kind", ERRORS)
def test_a_bad_request_gets_its_error_in_openais_shape_and_never_another_clients_answer(server, embedder, kind):
    status, code, send = ERRORS[kind]
    expected = embedder.embed_texts(TEXTS)[:, 0]
    answers: list[np.ndarray] = []

    def good_client() -> None:
        for _ in range(5):
            data = post(server, "/v1/embeddings", {"input": TEXTS}).json()["data"]
            answers.append(np.array([d["embedding"] for d in data], np.float32))

    thread = threading.Thread(target=good_client)
    thread.start()
    response = send(server)
    thread.join()
    error = response.json()["error"]
    assert response.status_code == status and error["message"] and error["code"] == code
    assert error["param"] == PARAMS.get(kind, error["param"])
    assert len(answers) == 5 and all(np.array_equal(a, expected) for a in answers)
    assert server.process.poll() is None


def test_an_error_in_one_item_of_several_names_that_item_alone(server):
    inputs = [data_uri(PHOTOS["coffee"]), "data:image/png;base64,AAAA", data_uri(PHOTOS["astronaut"])]
    error = post(server, "/v1/embeddings", {"input": inputs, "modality": "image"}).json()["error"]
    assert error["param"] == "input[1]" and error["message"].startswith("input[1]: ")


def run_manual_snippet(server, tmp_path, marker: str, check: str) -> None:
    """docs/serving.md's Python block holding `marker`, run as written against the test server (its port and key
    put in, a photo.jpg beside it), with `check` appended."""
    manual = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    (snippet,) = [s for s in re.findall(r"```python\n(.*?)```", manual, re.S) if marker in s]
    Image.fromarray(PHOTOS["coffee"]).save(tmp_path / "photo.jpg")
    code = f"KEY = {KEY!r}\n" + snippet.replace("localhost:8080", f"127.0.0.1:{server.openai}") + check
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_manuals_openai_client_snippet_runs_against_agff_serve(server, tmp_path):
    check = "\nassert len(texts.data) == 2 and len(images.data) == len(with_instruction.data) == 1\n"
    run_manual_snippet(server, tmp_path, "import openai", check)


def test_the_manuals_langchain_snippet_runs_against_agff_serve(server, tmp_path):
    run_manual_snippet(server, tmp_path, "OpenAIEmbeddings", "\nassert len(vectors) == 2\n")
