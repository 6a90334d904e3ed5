"""Lay the installed `tensorrt-stubs` out where mypy reads them (`.ci/stubs`).

The wheel ships `tensorrt/` and `tensorrt_bindings/` as bare .pyi folders
without `py.typed`, so mypy ignores them; copied onto `mypy_path` they are
read as stubs and mypy checks our TensorRT calls against the real API. Two
kinds of syntax slip in the generated stubs are mended on the way: parameters
named `in`, and a defaulted parameter before a required one.
"""

import re
import shutil
import site
import sys
from pathlib import Path

DEST = Path(__file__).parent / "stubs"


def mend(text: str) -> str:
    text = re.sub(r"([(,] ?)in: ", r"\1in_: ", text)
    return text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = 0)")


def main() -> int:
    for root in map(Path, site.getsitepackages()):
        if (root / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            shutil.rmtree(DEST, ignore_errors=True)
            for package in ("tensorrt", "tensorrt_bindings"):
                shutil.copytree(root / package, DEST / package)
            bindings = DEST / "tensorrt_bindings" / "tensorrt.pyi"
            bindings.write_text(mend(bindings.read_text()))
            print(f"tensorrt stubs copied from {root} to {DEST}")
            return 0
    print("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
