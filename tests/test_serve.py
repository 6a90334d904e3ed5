"""agff-serve on a real Triton Inference Server on loopback: results equal the in-process Embedder's, dynamic
batching batches, and bad requests get errors while the server goes on serving."""

import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from runtime.embedder import Embedder
from tests.conftest import scene_images

pytest.importorskip("pytriton", reason="agff-serve needs the serve extra: pip install -e '.[cpu,serve]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

from serve.client import EmbeddingClient  # noqa: E402
from serve.embedder_model import EmbeddingService  # noqa: E402
from serve.model_configs import read_config  # noqa: E402
from serve.request_items import RequestError  # noqa: E402
from serve.tritonserver import free_ports  # noqa: E402

CLIENTS, REQUESTS_EACH = 8, 200


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Served:
    def __init__(self, process: subprocess.Popen, ports: list[int], repository: Path) -> None:
        self.process, self.repository = process, repository
        self.http, self.grpc, self.metrics, self.openai = ports

    def client(self, protocol: str = "http") -> EmbeddingClient:
        port = self.http if protocol == "http" else self.grpc
        return EmbeddingClient(f"127.0.0.1:{port}", protocol)

    def is_ready(self) -> bool:
        """Triton's models and the OpenAI-style front end both answer."""
        urls = [f"http://127.0.0.1:{self.http}/v2/health/ready", f"http://127.0.0.1:{self.openai}/health"]
        try:
            for url in urls:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status != 200:
                        return False
        except OSError:
            return False
        return True


def start_agff_serve(engine: Path, repository: Path, *extra: str) -> Served:
    ports = free_ports(4)
    command = [sys.executable, "-m", "serve.cli", "--engine", str(engine), "--address", "127.0.0.1"]
    command += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    command += ["--openai-port", str(ports[3]), "--repository", str(repository), *extra]
    served = Served(subprocess.Popen(command, stderr=subprocess.PIPE, text=True), ports, repository)
    deadline = time.monotonic() + 120
    while not served.is_ready():
        if served.process.poll() is not None or time.monotonic() > deadline:
            served.process.kill()
            pytest.fail(f"agff-serve did not start: {served.process.communicate()[1]}")
        time.sleep(0.2)
    return served


def stop(served: Served, how: signal.Signals = signal.SIGINT) -> tuple[int, str]:
    served.process.send_signal(how)
    try:
        _, stderr = served.process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise
    return served.process.returncode, stderr


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    served = start_agff_serve(
        tiny_bundle, tmp_path_factory.mktemp("serve") / "models", "--max-batch", "16", "--max-queue-delay-ms", "20"
    )
    yield served
    if served.process.poll() is None:
        stop(served)


@pytest.fixture()
def own_server(tiny_bundle, tmp_path):
    """A server for one test, killed afterwards whatever the test did to it."""
    served = start_agff_serve(tiny_bundle, tmp_path / "models")
    yield served
    served.process.kill()
    served.process.communicate()


@pytest.fixture(scope="module")
def embedder(tiny_bundle):
    with Embedder.load(tiny_bundle) as model:
        yield model


PHOTOS = {"astronaut": data.astronaut(), "coffee": data.coffee()}
SCENES = {f"scene {i}": image for i, image in enumerate(scene_images(2, 96))}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("images", [PHOTOS, SCENES], ids=["photos", "scenes"])
def test_image_embeddings_equal_the_embedders(server, embedder, protocol, images):
    with server.client(protocol) as client:
        served = client.embed_images([png(a) for a in images.values()])
    np.testing.assert_allclose(served, embedder.embed_images(list(images.values())), rtol=0, atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_embeddings_with_instructions_equal_the_embedders(server, embedder, protocol):
    instructions = ["what colour is it", "how many things are there"]
    with server.client(protocol) as client:
        served = client.embed_images([png(a) for a in PHOTOS.values()], instructions)
    np.testing.assert_allclose(served, embedder.embed_images(list(PHOTOS.values()), instructions), rtol=0, atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("texts", [["an astronaut", "a cup of coffee"], ["a red circle", "two blue squares"]])
def test_text_embeddings_equal_the_embedders(server, embedder, protocol, texts):
    with server.client(protocol) as client:
        served = client.embed_texts(texts)
    np.testing.assert_allclose(served, embedder.embed_texts(texts), rtol=0, atol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_equal_the_embedders(server, embedder, protocol):
    images = embedder.embed_images(list(PHOTOS.values()))
    texts = embedder.embed_texts(["an astronaut", "coffee", "a cat"])
    with server.client(protocol) as client:
        served = client.score(images, texts)
    np.testing.assert_allclose(served, embedder.score(images, texts), rtol=0, atol=1e-6)


def test_concurrent_clients_each_get_their_own_answer_from_batches_larger_than_one(server, embedder):
    images = scene_images(CLIENTS * 2, 64, first=100)
    expected = embedder.embed_images(images)
    encoded = [png(a) for a in images]
    wrong: list[str] = []

    def client_loop(c: int) -> None:
        with server.client("http" if c % 2 else "grpc") as client:
            for r in range(REQUESTS_EACH):
                i = (c + r * CLIENTS) % len(images)
                got = client.embed_images([encoded[i]])
                if not np.allclose(got[0], expected[i], rtol=0, atol=1e-5):
                    wrong.append(f"client {c} request {r}: image {i} off by {np.abs(got[0] - expected[i]).max()}")

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with server.client() as client:
        batches = client.batch_sizes("image")
    assert wrong == []
    assert sum(size * count for size, count in batches.items()) >= CLIENTS * REQUESTS_EACH
    assert max(batches) > 1, batches


def raw_infer(server, model: str, inputs: list[tuple[str, str, np.ndarray]]):
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")
    tensors = []
    for name, datatype, array in inputs:
        tensor = http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        return client.infer(model, tensors)
    finally:
        client.close()


def column(*items: bytes) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    array[:, 0] = items
    return array


MALFORMED = {
    "not an image": ("image", [("image", "BYTES", column(b"GIF89a but not really"))], "not an image Pillow can read"),
    "wrong dtype": ("image", [("image", "FP32", np.zeros((1, 1), np.float32))], "FP32"),
    "empty text": ("text", [("text", "BYTES", column(b"   "))], "is empty"),
    "over-long text": ("text", [("text", "BYTES", column(("word " * 2000).encode()))], "over the model's"),
    "wrong input name": ("text", [("caption", "BYTES", column(b"a red circle"))], "caption"),
    "not UTF-8": ("text", [("text", "BYTES", column(b"\xff\xfe bad"))], "not UTF-8"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_gets_an_error_and_the_server_goes_on(server, embedder, case):
    model, inputs, message = MALFORMED[case]
    with pytest.raises(InferenceServerException, match=message):
        raw_infer(server, model, inputs)
    with server.client() as client:
        served = client.embed_texts(["a red circle"])
    np.testing.assert_allclose(served, embedder.embed_texts(["a red circle"]), rtol=0, atol=1e-6)
    assert server.process.poll() is None


def test_a_bad_image_fails_only_its_own_request_in_a_batch(embedder):
    service = EmbeddingService(embedder)
    good = column(png(PHOTOS["astronaut"]))
    results = service.images([(good, None, None), (column(b"junk"), None, None), (good, None, None)])
    assert isinstance(results[1], RequestError)
    np.testing.assert_allclose(results[0], embedder.embed_images([PHOTOS["astronaut"]]), atol=1e-6)
    np.testing.assert_allclose(results[2], results[0], atol=0)


def test_an_instruction_per_image_is_required_when_instructions_are_sent(embedder):
    service = EmbeddingService(embedder)
    (result,) = service.images([(column(png(PHOTOS["coffee"]), png(PHOTOS["coffee"])), column(b"only one"), None)])
    assert isinstance(result, RequestError) and "1 instructions for 2 images" in str(result)


def test_a_client_that_disconnects_mid_request_does_no_harm(server, embedder):
    body = b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a red'
    with socket.create_connection(("127.0.0.1", server.http)) as s:  # headers promise more body than is sent
        s.sendall(b"POST /v2/models/text/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: 100000\r\n\r\n" + body)
    big = png(data.astronaut())
    with socket.create_connection(("127.0.0.1", server.http)) as s:  # a whole request, gone before the answer
        header = b'{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":'
        payload = header + str(len(big) + 4).encode() + b"}}]}"
        lengths = f"Inference-Header-Content-Length: {len(payload)}\r\nContent-Length: {len(payload) + len(big) + 4}"
        s.sendall(
            b"POST /v2/models/image/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            + f"{lengths}\r\n\r\n".encode()
            + payload
            + len(big).to_bytes(4, "little")
            + big
        )
    time.sleep(0.5)
    with server.client() as client:
        np.testing.assert_allclose(
            client.embed_images([big]), embedder.embed_images([data.astronaut()]), rtol=0, atol=1e-6
        )
    assert server.process.poll() is None


def test_metrics_count_the_successful_requests(server):
    with server.client() as client:
        client.embed_texts(["a red circle"])
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'nv_inference_request_success{model="text",version="1"}' in metrics


def test_the_served_configs_batch_with_the_flags_given(server, embedder):
    image = read_config(server.repository / "image" / "config.pbtxt")
    score = read_config(server.repository / "score" / "config.pbtxt")
    assert image.max_batch_size == 16
    assert image.dynamic_batching.max_queue_delay_microseconds == 20000
    assert [i.name for i in image.input] == ["image", "instruction", "task"]
    assert list(image.output[0].dims) == list(embedder.embed_texts(["a"]).shape[1:])
    assert score.max_batch_size == 0


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_agff_serve_stops_with_status_0_on_sigint_or_sigterm(own_server, how):
    code, stderr = stop(own_server, how)
    assert code == 0, stderr
    assert not own_server.is_ready()


def test_agff_serve_refuses_a_missing_engine_before_starting_triton(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "--engine", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "nothing" in result.stderr and result.stderr.startswith("error:")


def test_killing_agff_serve_takes_its_triton_server_down(own_server):
    own_server.process.kill()
    own_server.process.wait()
    deadline = time.monotonic() + 30
    while own_server.is_ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not own_server.is_ready()


def test_the_readmes_client_snippet_runs_against_agff_serve(server):
    root = Path(__file__).resolve().parents[1]
    snippets = re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
    (snippet,) = [s for s in snippets if "EmbeddingClient" in s]
    snippet = snippet.replace("localhost:8000", f"127.0.0.1:{server.http}") + "\nassert scores.shape == (1, 2)\n"
    done = subprocess.run([sys.executable, "-c", snippet], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
