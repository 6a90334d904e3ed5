"""The README's main job, end to end: train the demo model, export and gate it, run agff-run (minutes: slow)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_trains_exports_and_runs(tmp_path):
    trained = subprocess.run(
        [sys.executable, "-m", "train.run", "--out", str(tmp_path / "ckpt")], capture_output=True, text=True, cwd=REPO
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    recall = float(re.search(r"R@1 among 256: ([0-9.]+)", trained.stdout).group(1))
    # Without EGA (the default since the comparison on docs/results.md) measured 0.883 at seed 0 and 0.922 at seed 1
    # (2-core CPU, `python -m train.run --ega-alpha 0 [--seed 1]`); with EGA it was 0.934 at seed 0. Over 256 pairs the
    # sampling spread alone is about 0.02 (binomial at 0.88), so 0.82 sits three of those below the lower run; a model
    # that stopped learning scores near chance, 1/256.
    assert recall >= 0.82, trained.stdout

    exported = subprocess.run(
        [sys.executable, "-m", "export.to_onnx", str(tmp_path / "ckpt"), "-o", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-2000:]
    assert "parity gate passed" in exported.stdout

    query = "a forest scene with two large red outlined circles at the top"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "--engine",
            str(tmp_path / "bundle"),
            "samples/",
            "--query",
            query,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ran.returncode == 0, ran.stderr
    ranking = json.loads(ran.stdout.strip().splitlines()[-1])["ranking"]
    assert ranking[0]["path"].endswith("two-red-circles.png")

    labels = "beach forest night snow desert room".split()
    classified = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "--engine", str(tmp_path / "bundle"), "samples/two-red-circles.png",
         "samples/orange-circles.png", "--labels", *labels, "--label-template", "a photo of a {} scene", "--json"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert classified.returncode == 0, classified.stderr
    summary = json.loads(classified.stdout.strip().splitlines()[-1])
    assert [item["label"] for item in summary["labels"]] == ["forest", "beach"], summary
