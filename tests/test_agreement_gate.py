"""The int8 gate's top-1 retrieval agreement, on the tiny model's int8 graphs: its bar decides, a broken graph fails.

The shared tiny bundle is exported without it (agreement_pairs=0: the tiny model is trained for seconds, so its
int8 agreement is noisy, between 87% and 100% depending on the number of pairs); here it runs on 64 held-out pairs
and the bar is set at what int8 reached, and one pair above.
"""

import argparse
import dataclasses
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agff_deploy.checkpoint import item_encoder, load_checkpoint
from agff_deploy.contract import ENCODERS
from agff_deploy.manifest import read_manifest
from export import check
from export.check import GateReport, bars_at, compare, pytorch_reference
from export.gate_reference import save_gate_reference
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


def test_auto_takes_as_many_pairs_as_fit_the_budget_in_whole_chunks():
    per_pair = check.AGREEMENT_BUDGET_S / (3 * 100)  # PyTorch, int8 and int4: 100 pairs fit, 96 in whole chunks
    plan = check.plan_agreement(None, per_pair, ["fp32", "int8", "int4"])
    assert plan.pairs == 96 and plan.reason.startswith("auto: ") and "(PyTorch, int8, int4)" in plan.reason


def test_auto_keeps_the_least_count_that_still_checks_top1_on_a_slow_model():
    plan = check.plan_agreement(None, 60.0, ["fp32", "int8"])
    assert plan.pairs == check.AGREEMENT_PAIRS[0] and "the least that still gives a top-1 check" in plan.reason


def test_auto_takes_no_more_than_the_most_pairs_on_a_fast_model():
    assert check.plan_agreement(None, 1e-4, ["int8"]).pairs == check.AGREEMENT_PAIRS[1]


def test_auto_runs_no_pairs_when_no_precision_has_a_top1_bar():
    plan = check.plan_agreement(None, 1e-4, ["fp32", "fp16"])
    assert plan.pairs == 0 and "no precision asked for has a top-1 bar" in plan.reason


def test_a_count_given_is_taken_as_it_is():
    assert check.plan_agreement(7, 60.0, ["int8"]) == check.AgreementPlan(7, "--agreement-pairs 7")


def test_the_reference_sizes_the_pairs_by_its_own_speed_and_says_why_in_its_record(
    tiny_checkpoint, tiny_bundle, monkeypatch, tmp_path
):
    monkeypatch.setattr(check, "AGREEMENT_BUDGET_S", 1e-9)
    model, tokenizer = load_checkpoint(tiny_checkpoint)
    encoder = item_encoder(model.config, tokenizer)
    runners, sets = pytorch_reference(model, encoder, read_manifest(tiny_bundle).fusion, precisions=["int8"])
    assert sum(len(chunk["attention_mask"]) for chunk in sets.held_out.feeds["text_encoder"]) == 32
    assert "the least that still gives a top-1 check" in sets.agreement
    assert all(runners[name].recorded(feed) is not None for name in ENCODERS for feed in sets.feeds(name))
    assert save_gate_reference(tmp_path, runners, sets).agreement == sets.agreement


def test_the_pairs_argument_takes_auto_or_a_count():
    assert check.agreement_pairs_argument("auto") is None and check.agreement_pairs_argument("64") == 64
    with pytest.raises(argparse.ArgumentTypeError, match="'-3': give a count of pairs"):
        check.agreement_pairs_argument("-3")
