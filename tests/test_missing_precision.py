"""A bundle asked for a precision it lacks says what to do, in flags the exporter accepts."""

import re

import pytest

from agff_deploy.manifest import graph_entry
from export.bundle import parse_precisions
from export.to_onnx import parse_args

BUNDLE = {"graphs": {"fp32": {"image_encoder": {}}, "fp16": {"image_encoder": {}}}}


def advised_precisions(asked: str) -> list[str]:
    with pytest.raises(KeyError) as missing:
        graph_entry(BUNDLE, asked, "image_encoder")
    return re.findall(r"--precision ([\w-]+)", str(missing.value))


@pytest.mark.parametrize(("asked", "advised"), [("fp8", ["fp32", "fp16"]), ("int8", ["int8"])])
def test_a_missing_precision_is_answered_with_precisions_to_use(asked, advised):
    assert advised_precisions(asked) == advised


@pytest.mark.parametrize("asked", ["fp8", "bf16", "int8", "int8-dynamic"])
def test_the_advised_precisions_are_accepted_by_the_exporter(asked, tmp_path):
    for precision in advised_precisions(asked):
        args = parse_args([str(tmp_path), "--precision", precision])
        assert parse_precisions(args.precision)[-1] == precision
