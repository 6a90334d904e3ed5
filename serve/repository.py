"""The model repository agff-serve hands to Triton: `image`, `text` and `score`, each a Python-backend model that
runs `serve.embedder_model` on the artifact the user named.

    image   image (BYTES, an encoded file) [+ instruction (BYTES)] [+ task (BYTES)]
                                                                     ->  embeddings FP32 [K+1, D]  (dynamic batching)
    text    text (BYTES, UTF-8) [+ task (BYTES)]                     ->  embeddings FP32 [K+1, D]  (dynamic batching)

`task` is a single-vector embedder's task instruction (its system turn), one
per item or one for the request; an AGFF model refuses it.
    score   queries FP32 [Nq, K+1, D], candidates FP32 [Nc, K+1, D]  ->  scores FP32 [Nq, Nc]

`score` does not batch across requests: each request is already a whole
query-by-candidate matrix, and Triton only batches requests of equal shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .model_configs import Batching, Tensor, model_config, write_config
from .request_items import CANDIDATES, EMBEDDINGS, IMAGE, INSTRUCTION, QUERIES, SCORES, TASK, TEXT

MODEL_PY = "from serve.embedder_model import TritonPythonModel  # noqa: F401  (Triton looks the class up here)\n"


@dataclass(frozen=True)
class ServeSettings:
    engine: Path  # a bundle folder, .onnx or .plan: whatever Embedder.load takes
    backend: str = ""  # empty: the one the path implies
    precision: str = ""
    max_batch: int = 64
    max_queue_delay_ms: float = 2.0
    instances: int = 1
    threads: int = 0  # per instance; 0: the backend's default
    max_pixels: int = 0  # 0: the runtime's decompression-bomb cap


def write_serving_repository(folder: Path, settings: ServeSettings, num_prompts: int, hidden_size: int) -> Path:
    """Write the three models under `folder` (created) and return it."""
    embeddings = Tensor(EMBEDDINGS, "float32", (num_prompts, hidden_size))
    item_sets = [Tensor(name, "float32", (-1, num_prompts, hidden_size)) for name in (QUERIES, CANDIDATES)]
    batching = Batching(settings.max_batch, round(settings.max_queue_delay_ms * 1000))
    task = Tensor(TASK, "bytes", (1,), optional=True)
    models = {
        "image": (
            [Tensor(IMAGE, "bytes", (1,)), Tensor(INSTRUCTION, "bytes", (1,), optional=True), task],
            [embeddings],
        ),
        "text": ([Tensor(TEXT, "bytes", (1,)), task], [embeddings]),
        "score": (item_sets, [Tensor(SCORES, "float32", (-1, -1))]),
    }
    for task, (inputs, outputs) in models.items():
        parameters = {
            "task": task,
            "engine": str(settings.engine.resolve()),
            "backend": settings.backend,
            "precision": settings.precision,
            "threads": str(settings.threads),
            "max_pixels": str(settings.max_pixels),
        }
        config = model_config(
            task,
            inputs,
            outputs,
            None if task == "score" else batching,
            backend="python",
            instances=settings.instances,
            parameters=parameters,
        )
        version = folder / task / "1"
        version.mkdir(parents=True, exist_ok=True)
        (version / "model.py").write_text(MODEL_PY)
        write_config(folder / task, config)
    return folder
