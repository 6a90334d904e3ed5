"""Import ONNX Runtime, or say which extra installs it.

The CPU (`onnxruntime`) and GPU (`onnxruntime-gpu`) wheels both provide the
`onnxruntime` module and overwrite each other, so agff-deploy leaves the
choice to an extra instead of depending on either.
"""

from __future__ import annotations

from types import ModuleType

from agff_deploy.errors import MissingDependencyError

MISSING_ONNXRUNTIME = (
    "ONNX Runtime is not installed. Install exactly one flavour: "
    "pip install 'agff-deploy[cpu]' (onnxruntime) or, on an NVIDIA host, pip install 'agff-deploy[gpu]' "
    "(onnxruntime-gpu, tensorrt, cuda-python)."
)


def import_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(MISSING_ONNXRUNTIME) from err
    return onnxruntime
