"""`kill -9` during `python -m export.to_onnx`, then the same command again: never a corrupt or partial bundle."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agff_deploy.manifest import Manifest, read_manifest, sha256_file

REPO = Path(__file__).resolve().parents[1]
# Lines the exporter prints as it enters each stage: PyTorch reference, graph export, parity gate.
STAGES = ("PyTorch reference", "fp32/vision_encoder.onnx", "parity gate ...")


def export_command(ckpt: Path, out: Path) -> list[str]:
    options = ["--precision", "fp32", "--agreement-pairs", "0", "--gate-images", "1", "2", "--batch", "1", "2", "4"]
    return [sys.executable, "-m", "export.to_onnx", str(ckpt), "-o", str(out), *options]


def export(ckpt: Path, out: Path) -> None:
    subprocess.run(export_command(ckpt, out), capture_output=True, check=True, cwd=REPO)


def kill_when_printed(ckpt: Path, out: Path, stage: str) -> None:
    """Run the export and SIGKILL it as soon as it prints `stage`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "text": True}
    with subprocess.Popen(export_command(ckpt, out), cwd=REPO, env=env, **pipes) as run:
        next(line for line in run.stdout if stage in line)
        run.send_signal(signal.SIGKILL)
    assert run.returncode == -signal.SIGKILL


def assert_complete(bundle: Path, manifest: Manifest) -> None:
    assert read_manifest(bundle) == manifest
    for graphs in manifest.graphs.values():
        for entry in graphs.values():
            assert sha256_file(bundle / entry.file) == entry.sha256


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "bundle"
    export(tiny_checkpoint, out)
    return out


@pytest.mark.slow
def test_a_killed_first_export_leaves_no_bundle_and_the_rerun_writes_the_uninterrupted_one(
    tiny_checkpoint, uninterrupted, tmp_path
):
    out = tmp_path / "bundle"
    for stage in STAGES:
        kill_when_printed(tiny_checkpoint, out, stage)
        assert not out.exists()
    export(tiny_checkpoint, out)
    assert_complete(out, read_manifest(uninterrupted))
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@pytest.mark.slow
def test_a_killed_re_export_leaves_the_old_bundle_whole(tiny_checkpoint, uninterrupted, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(uninterrupted, out)
    for stage in STAGES[1:]:
        kill_when_printed(tiny_checkpoint, out, stage)
        assert_complete(out, read_manifest(uninterrupted))
