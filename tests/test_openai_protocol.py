"""The OpenAI-style request bodies read into items, and every way a body is refused, before any model runs."""

import base64
import json

import numpy as np
import pytest

from serve.openai_protocol import (
    Item,
    Limits,
    ProtocolError,
    embedding_request,
    encode_vector,
    matryoshka,
    rerank_request,
    response_json,
)

LIMITS = Limits(max_items=4, max_image_bytes=64)
PNG = b"\x89PNG\r\n\x1a\n fake image bytes"
URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


def refused(body, reader=embedding_request) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        reader(body, LIMITS)
    return caught.value


def test_a_string_input_is_one_text_item():
    request = embedding_request({"input": "a red circle"}, LIMITS)
    assert request.items == [Item("input[0]", "a red circle")]
    assert (request.encoding_format, request.vectors, request.dimensions) == ("float", "global", None)


def test_infinitys_image_modality_reads_data_uris_and_bare_base64_as_images():
    bare = base64.b64encode(PNG).decode()
    request = embedding_request({"input": [URI, bare], "modality": "image"}, LIMITS)
    assert [(i.param, i.image, i.text) for i in request.items] == [("input[0]", PNG, ""), ("input[1]", PNG, "")]


def test_a_vllm_conversation_is_one_item_of_its_image_and_texts():
    content = [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": URI}},
               {"type": "text", "text": "is it"}]  # fmt: skip
    (item,) = embedding_request({"messages": [{"role": "user", "content": content}]}, LIMITS).items
    assert item == Item("messages", "what is it", PNG)


def test_a_url_is_refused_with_the_way_to_send_the_image_instead():
    error = refused({"input": ["https://example.com/a.png"], "modality": "image"})
    assert error.param == "input[0]" and "does not fetch URLs" in error.message and error.status == 400


def test_token_ids_are_refused_naming_the_item():
    error = refused({"input": [[1, 2, 3]]})
    assert error.param == "input[0]" and "token ids" in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": "x", "messages": []}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a"] * 5}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "vectors": "some"}, "vectors"),
        ({"input": ["not base64!"], "modality": "image"}, "input[0]"),
        ({"input": ["data:text/plain;base64,eA=="], "modality": "image"}, "input[0]"),
        ({"input": [base64.b64encode(bytes(100)).decode()], "modality": "image"}, "input[0]"),
        ({"messages": [{"role": "system", "content": "be brief"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0]"),
    ],
    ids=[
        "nothing",
        "both",
        "empty",
        "too many",
        "format",
        "dimensions",
        "vectors",
        "bad base64",
        "not an image uri",
        "image too large",
        "system turn",
        "unknown part",
    ],  # fmt: skip
)
def test_a_malformed_embedding_body_is_refused_naming_the_field(body, param):
    error = refused(body)
    assert error.param == param and error.status == 400 and error.body()["error"]["param"] == param


def test_a_rerank_body_reads_texts_and_images_on_either_side():
    request = rerank_request({"query": {"image": URI}, "documents": ["a", {"text": "b"}], "top_n": 5}, LIMITS)
    assert request.query == Item("query", "", PNG)
    assert request.documents == [Item("documents[0]", "a"), Item("documents[1]", "b")]
    assert (request.top_n, request.return_documents) == (2, False)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"documents": ["a"]}, "query"), ({"query": "q", "documents": []}, "documents"),
     ({"query": "q", "documents": [3]}, "documents[0]"), ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n")],
    ids=["no query", "no documents", "a number", "negative top_n"],
)  # fmt: skip
def test_a_malformed_rerank_body_is_refused_naming_the_field(body, param):
    assert refused(body, rerank_request).param == param


def test_base64_encoding_is_the_little_endian_float32_bytes():
    vector = np.array([0.1, -2.5, 3e-8], np.float32)
    assert np.array_equal(np.frombuffer(base64.b64decode(encode_vector(vector, "base64")), "<f4"), vector)


def test_float_encoding_reads_back_into_the_same_float32_values():
    vectors = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    text = response_json({"embedding": encode_vector(vectors, "float")})
    assert np.array_equal(np.array(json.loads(text)["embedding"], np.float32), vectors)
    assert len(text) < 12 * vectors.size  # float32's shortest text, not float64's 17 digits


def test_matryoshka_keeps_the_leading_dimensions_renormalised():
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 5.0]], np.float32)
    np.testing.assert_allclose(matryoshka(vectors, 2), [[0.6, 0.8], [1.0, 0.0]])
    assert matryoshka(vectors, None) is vectors


class FixedModels:
    """Triton's models stood in by fixed vectors: what the front end does with them is under test."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    async def embed(self, items, task):
        return [self.vectors[i] for i in range(len(items))]

    async def close(self) -> None:
        pass


def front_end_post(card_fields: dict, body: dict, vectors: np.ndarray) -> tuple[int, dict]:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from serve.openai_server import FrontEnd, ModelCard

    card = ModelCard(**{"id": "m", "dimensions": 3, "vectors": 1, "precision": "fp32", "backend": "onnxruntime",
                        "matryoshka": False, "takes_task": False, "max_text_tokens": 16, **card_fields})  # fmt: skip

    async def run() -> tuple[int, dict]:
        front_end = FrontEnd(FixedModels(vectors), card, lambda item, task: len(item.text), None)
        async with TestClient(TestServer(front_end.app(1 << 20))) as client:
            response = await client.post("/v1/embeddings", json=body)
            return response.status, await response.json()

    return asyncio.run(run())


def test_a_matryoshka_bundle_cuts_the_vectors_to_the_dimensions_asked_for_renormalised():
    vectors = np.array([[[3.0, 4.0, 12.0]], [[1.0, 0.0, 5.0]]], np.float32)
    status, body = front_end_post({"matryoshka": True}, {"input": ["ab", "cde"], "dimensions": 2}, vectors)
    assert status == 200 and body["usage"]["prompt_tokens"] == 5
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)


def test_dimensions_over_the_vectors_length_are_refused_even_where_cutting_is_allowed():
    status, body = front_end_post({"matryoshka": True}, {"input": ["ab"], "dimensions": 4}, np.ones((1, 1, 3)))
    assert status == 400 and body["error"]["param"] == "dimensions" and "at most 3" in body["error"]["message"]


def test_a_task_for_a_bundle_that_takes_none_is_refused_naming_where_the_instruction_goes():
    status, body = front_end_post({}, {"input": ["ab"], "task": "Retrieve images."}, np.ones((1, 1, 3)))
    assert status == 400 and body["error"]["param"] == "task" and "an item's text" in body["error"]["message"]
