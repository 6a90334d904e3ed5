"""bench.native_cost: native resolution against the fixed square on one native bundle, recorded with provenance."""

import json

import pytest

from agff_deploy.preprocessing import NativeImageSettings
from bench import native_cost
from tests.conftest import export_bundle


@pytest.fixture(scope="module")
def native_bundle(tmp_path_factory):
    from train.trainer import Trainer, TrainSettings

    ckpt = tmp_path_factory.mktemp("native-cost") / "ckpt"
    settings = TrainSettings(
        out=str(ckpt), preset="tiny", steps=2, batch_size=4, eval_pairs=0, image_resize="native", max_pixels=112 * 112
    )
    Trainer.create(settings).run()
    out = ckpt.parent / "bundle"
    assert export_bundle(ckpt, out, precisions=("fp32",), batch=(1, 4, 8), agreement_pairs=0).passed
    return out


def test_the_record_counts_each_photos_tokens_both_ways_and_times_both(native_bundle, tmp_path):
    out = tmp_path / "native-cost.json"
    assert native_cost.main([str(native_bundle), "--size", "56", "--repeat", "1", "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    settings = NativeImageSettings(max_pixels=112 * 112)
    expected = [
        h * w // 28**2 for h, w in (settings.resized_size(p["size"][1], p["size"][0]) for p in record["photos"])
    ]
    assert [p["native_tokens"] for p in record["photos"]] == expected
    assert len(set(expected)) >= 4  # the photos really differ in size
    assert {p["fixed_tokens"] for p in record["photos"]} == {4}  # 56 px: 2 x 2 merged tokens
    assert record["latency"]["native"]["ms_per_image_batch1"] > 0 and record["gate"]
    assert record["provenance"]["command"][:3] == ["python", "-m", "bench.native_cost"]


def test_a_fixed_size_bundle_is_refused_with_why(tiny_bundle, capsys):
    assert native_cost.main([str(tiny_bundle)]) != 0
    assert "was exported at a fixed size" in capsys.readouterr().err
