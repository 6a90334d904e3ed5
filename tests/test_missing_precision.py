"""A bundle asked for a precision it lacks says what to do, in flags the exporter accepts."""

import re

import pytest

from agff_deploy.manifest import Parity
from export.bundle import parse_precisions
from export.to_onnx import parse_args
from tests.conftest import sample_manifest

ENTRY = sample_manifest().graphs["fp32"]["vision_encoder"]
BUNDLE = sample_manifest(graphs={"fp32": {"vision_encoder": ENTRY}, "fp16": {"vision_encoder": ENTRY}})


def advised_precisions(asked: str) -> list[str]:
    with pytest.raises(KeyError) as missing:
        BUNDLE.graph(asked, "vision_encoder")
    return re.findall(r"--precision ([\w-]+)", str(missing.value))


@pytest.mark.parametrize(("asked", "advised"), [("fp8", ["fp32", "fp16"]), ("int8", ["int8"])])
def test_a_missing_precision_is_answered_with_precisions_to_use(asked, advised):
    assert advised_precisions(asked) == advised


@pytest.mark.parametrize("asked", ["fp8", "bf16", "int8", "int8-dynamic"])
def test_the_advised_precisions_are_accepted_by_the_exporter(asked, tmp_path):
    for precision in advised_precisions(asked):
        args = parse_args([str(tmp_path), "--precision", precision])
        assert parse_precisions(args.precision)[-1] == precision


def test_a_precision_the_gate_left_out_is_answered_with_the_gate_s_reason():
    reason = "image_encoder on input set A: min cos 0.97000, max abs 2.00e-02 (bar cos>=0.98 top1>=95%)"
    bundle = sample_manifest(parity=Parity(True, (), {"int8": [reason]}))
    with pytest.raises(
        KeyError, match=re.escape(f"the parity gate left it out ({reason}); export with --precision int8")
    ):
        bundle.graph("int8", "vision_encoder")
