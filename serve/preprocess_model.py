"""The Python-backend preprocessing models of a standalone Triton repository (`python -m export.to_triton`).

    image_preprocess  image (BYTES) [+ instruction (BYTES)]  ->  pixel_values FP32 [3, H, W],
                                                                  input_ids INT64 [L], attention_mask INT64 [L]
    text_preprocess   text (BYTES, UTF-8)                     ->  input_ids INT64 [L], attention_mask INT64 [L],
                                                                  image_features FP32 [1, D] (zeros),
                                                                  deepstack_features FP32 [S, 1, D] (zeros; Qwen3-VL)

They decode, resize and tokenize exactly as the runtime does (`runtime.spec.ModelSpec.feed_encoder`), then
right-pad the tokens to one fixed length L per model, the longest item the bundle's manifest allows. Every
request then has the same shape, so Triton's dynamic batcher can batch them in front of the encoders; the
padding is masked, so no embedding changes. Items are checked one by one with agff-serve's messages
(`serve.embedder_model`), and a bad item fails its own request only.

Text items run the same language encoder as image items, which takes image features as well. An ensemble cannot
make a constant, so the text model emits the placeholder the runtime feeds (`agff_deploy.feeds.language_feed`):
one zero feature per item (and per DeepStack tap), which no token reads because a text has no `<|image_pad|>` id.

`Preprocessor` holds all of that and knows nothing of Triton, so tests drive it directly; `TritonPythonModel`
moves tensors in and out of Triton's request objects. No torch and no ONNX Runtime: a Triton container needs
only `pip install agff-deploy`. The model reads `manifest.json` and the tokenizer from its own version folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.contract import ATTENTION_MASK, INPUT_IDS, LANGUAGE_ENCODER, GraphSpec, resolved_stored
from agff_deploy.errors import ArtifactError
from agff_deploy.feeds import language_feed
from agff_deploy.images import DEFAULT_MAX_PIXELS
from agff_deploy.manifest import Manifest, read_manifest
from runtime.spec import ModelSpec

from .request_items import IMAGE, INSTRUCTION, TEXT, RequestError, RequestItems

Feeds = dict[str, np.ndarray]
Result = Feeds | RequestError


def fixed_lengths(manifest: Manifest) -> dict[str, int]:
    """The one token length L each task pads to: the longest item the bundle's graphs were exported for."""
    return {"image": manifest.dims.image_length.max, "text": manifest.dims.text_length.max}


class Preprocessor:
    """Per-request checks and preprocessing into fixed-shape encoder inputs, one result per request; `language` is
    the language encoder's contract, whose vision inputs a text item carries placeholders for."""

    def __init__(
        self, spec: ModelSpec, lengths: dict[str, int], language: GraphSpec, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.encoder = spec.feed_encoder()
        self.formatter = self.encoder.formatter
        self.lengths = lengths
        self.language = language
        self.items = RequestItems(self.formatter, self.encoder.preprocessor, max_pixels)
        if self.formatter.pad_id is None:
            raise ArtifactError(f"{spec.tokenizer_file} has no <|endoftext|> token to pad with; re-export the bundle")
        self.pad_id: int = self.formatter.pad_id
        for task, length in lengths.items():
            longest = self.formatter.length_range(with_image=task == "image")[1]
            if longest > length:
                raise ArtifactError(
                    f"{task} items reach {longest} tokens but the manifest's {task} length ends at {length}; "
                    "re-export the bundle"
                )

    @classmethod
    def from_folder(cls, folder: Path) -> Preprocessor:
        """From a folder holding a bundle's manifest.json and the tokenizer file it names."""
        manifest = read_manifest(folder)
        language = resolved_stored(manifest.sizes())[LANGUAGE_ENCODER.name]
        return cls(ModelSpec.from_manifest(folder, manifest), fixed_lengths(manifest), language)

    def images(self, requests: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> list[Result]:
        """Each request: encoded image files `[n, 1]` (bytes) and optionally one instruction per image."""
        return [self._image_request(images, instructions) for images, instructions in requests]

    def texts(self, requests: Sequence[np.ndarray]) -> list[Result]:
        """Each request: texts `[n, 1]` (UTF-8 bytes); each result is the language encoder's whole feed."""
        return [self._text_request(raw) for raw in requests]

    def _image_request(self, images: np.ndarray, instructions: np.ndarray | None) -> Result:
        try:
            rows, texts = self.items.images(images, instructions)
        except RequestError as err:
            return err
        normalize = self.encoder.preprocessor.normalize
        feed = self.encoder.image_feed(self.encoder.patches([normalize(r) for r in rows]), texts)
        return self._padded(feed, self.lengths["image"])

    def _text_request(self, raw: np.ndarray) -> Result:
        try:
            texts = self.items.texts(raw)
        except RequestError as err:
            return err
        return language_feed(self._padded(self.encoder.text_feed(texts), self.lengths["text"]), self.language)

    def _padded(self, feed: Feeds, length: int) -> Feeds:
        """Tokens right-padded to `length`: pad ids, mask 0, as the runtime pads a batch to its longest item."""
        extra = length - feed[INPUT_IDS.name].shape[1]
        ids = np.pad(feed[INPUT_IDS.name], ((0, 0), (0, extra)), constant_values=self.pad_id)
        mask = np.pad(feed[ATTENTION_MASK.name], ((0, 0), (0, extra)), constant_values=0)
        return {**feed, INPUT_IDS.name: ids, ATTENTION_MASK.name: mask}


class TritonPythonModel:
    """Triton's entry point; the config's `task` parameter says which preprocessing it serves."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.task = json.loads(args["model_config"])["parameters"]["task"]["string_value"]
        self.preprocessor = Preprocessor.from_folder(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.task == "image":
            results = self.preprocessor.images([(self._input(r, IMAGE), self._input(r, INSTRUCTION)) for r in requests])
        else:
            results = self.preprocessor.texts([self._input(r, TEXT) for r in requests])
        return [self._response(result) for result in results]

    def _input(self, request: Any, name: str) -> Any:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _response(self, result: Result) -> Any:
        if isinstance(result, RequestError):
            return self.pb.InferenceResponse(error=self.pb.TritonError(str(result), self.pb.TritonError.INVALID_ARG))
        return self.pb.InferenceResponse([self.pb.Tensor(name, np.ascontiguousarray(a)) for name, a in result.items()])
