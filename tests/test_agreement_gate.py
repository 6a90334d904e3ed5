"""The int8 gate's top-1 retrieval agreement, on the tiny model's int8 graphs: its bar decides, a broken graph fails.

The shared tiny bundle is exported without it (agreement_pairs=0: the tiny model is trained for seconds, so its
int8 agreement is noisy, between 87% and 100% depending on the number of pairs); here it runs on 64 held-out pairs
and the bar is set at what int8 reached, and one pair above.
"""

import dataclasses
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.contract import ENCODERS
from agff_deploy.manifest import read_manifest
from export.check import GateReport, bars_at, compare, pytorch_reference
from runtime.loading import ort_runners

PAIRS = 64


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tiny_bundle):
    model, tokenizer = load_checkpoint(tiny_checkpoint)
    return pytorch_reference(
        model, item_encoder(model.config, tokenizer), read_manifest(tiny_bundle).fusion, agreement_pairs=PAIRS
    )


def int8_gate(bundle, reference, bars):
    runners, input_sets = reference
    candidates = ort_runners(bundle, read_manifest(bundle), "int8", graphs=ENCODERS, check_hashes=False)
    return GateReport(compare(runners, candidates, input_sets, bars, "int8"), {})


def retrieval_row(report):
    (row,) = [r for r in report.rows if r.graph == "retrieval"]
    return row


def with_top1(top1):
    return {name: dataclasses.replace(bar, top1=top1) for name, bar in bars_at("int8", ENCODERS).items()}


def test_int8_passes_a_top1_bar_at_the_agreement_it_reaches_and_is_refused_one_pair_above(tiny_bundle, reference):
    reached = retrieval_row(int8_gate(tiny_bundle, reference, bars_at("int8", ENCODERS))).top1
    assert reached is not None and reached * PAIRS == round(reached * PAIRS)

    at = int8_gate(tiny_bundle, reference, with_top1(reached))
    assert at.passed and retrieval_row(at).inputs == str(PAIRS)

    one_more = with_top1(reached + 1 / PAIRS)
    above = int8_gate(tiny_bundle, reference, one_more)
    assert not above.passed and [r.graph for r in above.rows if not r.passed] == ["retrieval"]
    assert above.failures("int8") == [
        f"retrieval top-1 agreement {reached:.1%} over {PAIRS} held-out pairs "
        f"(bar {one_more['image_encoder'].describe()})"
    ]


def test_an_int8_text_encoder_with_shuffled_weights_fails_the_agreement_bar(tmp_path, tiny_bundle, reference):
    broken = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, broken)
    path = broken / "int8" / "language_encoder.onnx"
    graph = onnx.load(str(path))
    weight = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(weight)
    shuffled = np.random.default_rng(0).permutation(values.reshape(-1)).reshape(values.shape)
    weight.CopyFrom(numpy_helper.from_array(shuffled, weight.name))
    onnx.save(graph, str(path))
    row = retrieval_row(int8_gate(broken, reference, bars_at("int8", ENCODERS)))
    assert not row.passed and row.top1 < 0.5
