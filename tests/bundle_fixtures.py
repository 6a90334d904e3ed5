"""The fixtures the runtime's tests use, without torch: a pytest plugin for hosts that only run bundles.

tests/conftest.py trains and exports its tiny bundle with torch. On a runtime-only host (`.ci/run` checks the
runtime on Python 3.10 this way, as on a Jetson with JetPack 6) a bundle exported elsewhere stands in for it:

    AGFF_TINY_BUNDLE=/path/to/bundle python -m pytest --noconftest -p tests.bundle_fixtures tests/test_cli.py

The bundle is what conftest's `tiny_bundle` builds: `python -m train.run --preset tiny --steps 40 --batch-size 16
--lr 3e-3 --warmup 5 --eval-pairs 0`, then `python -m export.to_onnx CKPT --precision fp32 fp16 int8 int8-dynamic
--batch 1 4 16 --agreement-pairs 0`.
"""

import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from agff_deploy.presets import local_tokenizer

BUNDLE_VARIABLE = "AGFF_TINY_BUNDLE"


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return local_tokenizer()


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    path = os.environ.get(BUNDLE_VARIABLE)
    if not path:
        pytest.fail(f"{BUNDLE_VARIABLE} is not set: name a bundle exported as this module's docstring says")
    bundle = Path(path)
    if not (bundle / "manifest.json").is_file():
        pytest.fail(f"{BUNDLE_VARIABLE}={path} is not an exported bundle (no manifest.json)")
    return bundle
