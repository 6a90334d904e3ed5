"""The typed, versioned bundle manifest: JSON in and out; older layouts and newer versions refused with what to do."""

import json

import pytest

from agff_deploy import __version__
from agff_deploy.errors import ArtifactError
from agff_deploy.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    EngineEntry,
    Engines,
    Manifest,
    Parity,
    ParityRow,
    read_manifest,
    write_manifest,
)
from tests.conftest import sample_manifest

ROWS = (
    ParityRow("fp32", "text_encoder", "A", 0.9999999, 1.2e-7, "cos>=0.99999 abs<=0.0001", True),
    ParityRow("fp32", "text_encoder", "B", 0.9999997, 3.0e-7, "cos>=0.99999 abs<=0.0001", True),
    ParityRow("int8", "retrieval", "256", None, None, "cos>=0.98 top1>=95%", True, 0.984),
)
ENGINES = Engines("fp16", "10.3.0", "Orin", {"scorer": EngineEntry("scorer.plan", "4" * 64, "scorer.onnx", "0" * 64)})

# A format_version 1 manifest: the layout that stored the language model in an image and a text encoder graph.
VERSION_1 = {
    "format": "agff-bundle",
    "format_version": 1,
    "created_by": "agff-deploy 0.1.0",
    "model": {"architecture": "qwen2_vl", "preset": "tiny", "num_fine": 2, "num_prompts": 3, "prompt_length": 2,
              "hidden_size": 32},
    "image": {"size": [56, 56], "layout": "NCHW", "dtype": "float32", "rescale": 1 / 255, "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25], "resample": "bicubic", "num_image_tokens": 4},
    "tokenizer": {"file": "tokenizer.json", "sha256": "1" * 64, "max_text_tokens": 48, "pad_id": 461,
                  "image_token_id": 473, "chat": {"user_head": "<|im_start|>user\n"}},
    "fusion": {"patterns": ["global-global"], "t_in": 0.05, "t_f": 0.05, "pattern_bias": [0.0, 0.1, -0.1, 0.0],
               "temperature": 0.05},
    "opset": 18,
    "dims": {"batch": {"min": 1, "opt": 4, "max": 16}, "image_length": {"min": 21, "max": 69},
             "text_length": {"min": 15, "max": 63}},
    "graphs": {"fp32": {"image_encoder": {
        "file": "fp32/image_encoder.onnx", "sha256": "0" * 64, "external_data": [],
        "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 56, 56]},
                   {"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"]},
                   {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "length"]}],
        "outputs": [{"name": "embeddings", "dtype": "float32", "shape": ["batch", 3, 32]}],
        "backends": ["onnxruntime", "tensorrt"]}}},
    "source": {"checkpoint": "/ckpt", "weights_sha256": "2" * 64, "config_sha256": "3" * 64},
    "parity": {"passed": True, "rows": [], "lint": {"fp32/image_encoder.onnx": []}},
    "engines": {"precision": "fp16", "tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
                "target": "generic", "built": "2025-01-01T00:00:00+00:00",
                "graphs": {"scorer": {"file": "scorer.plan", "sha256": "4" * 64, "source": "scorer.onnx",
                                      "source_sha256": "0" * 64, "profile": {"queries": [[1, 3, 32]] * 3}}}},
}  # fmt: skip


def test_a_manifest_reads_back_as_written(tmp_path):
    manifest = sample_manifest(parity=Parity(True, ROWS, {"fp16": ["too far"]}), engines=ENGINES)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest


def test_the_file_names_its_format_and_schema_version(tmp_path):
    write_manifest(tmp_path, sample_manifest())
    stored = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert (stored["format"], stored["format_version"]) == ("agff-bundle", FORMAT_VERSION)
    assert "parity" not in stored and "engines" not in stored


def test_a_version_1_bundle_is_refused_with_the_command_that_re_exports_it(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(VERSION_1))
    expected = (
        f"{tmp_path / MANIFEST_FILE}: format_version 1 is an older bundle layout (the language model stored per "
        f"encoder) that agff-deploy {__version__} no longer reads; re-export it with `python -m export.to_onnx CKPT`"
    )
    with pytest.raises(ArtifactError) as raised:
        read_manifest(tmp_path)
    assert str(raised.value) == expected


def test_a_manifest_written_by_a_newer_version_is_refused_naming_both_versions():
    newer = dict(VERSION_1, format_version=FORMAT_VERSION + 1, created_by="agff-deploy 9.0.0")
    expected = (
        f"format_version {FORMAT_VERSION + 1} \\(written by agff-deploy 9.0.0\\) is newer than agff-deploy "
        f"{__version__} reads \\(format_version {FORMAT_VERSION}\\); upgrade agff-deploy"
    )
    with pytest.raises(ValueError, match=expected):
        Manifest.from_json(newer)


def test_a_manifest_missing_a_nested_field_is_an_artifact_error_naming_the_file(tmp_path):
    data = sample_manifest().to_json()
    del data["dims"]
    with pytest.raises(ArtifactError, match=r"manifest.json: malformed manifest \(field 'dims'\); re-export"):
        Manifest.from_json(data)
