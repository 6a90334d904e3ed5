"""ONNX Runtime backend: TensorRT, CUDA and CPU execution providers, in that order, when available."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agff_deploy.contract import Feed, GraphSpec
from agff_deploy.errors import MissingFileError

from .onnxruntime_loader import import_onnxruntime
from .runner import ArtifactMismatch, Outputs, Runner, verify_sha256

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}
REEXPORT = "python -m export.to_onnx CKPT"


class OnnxSessionLoader:
    """Opens one ONNX graph in an ONNX Runtime session, after checking it is the file its manifest names."""

    def __init__(
        self,
        path: str | Path,
        expected_sha256: str | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.expected_sha256 = expected_sha256
        self.requested_providers = providers
        self.threads = threads
        self.session_config = dict(session_config or {})

    def providers(self) -> list[str]:
        available = import_onnxruntime().get_available_providers()
        wanted = self.requested_providers or PREFERRED_PROVIDERS
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]

    def __call__(self) -> Any:
        if not self.path.is_file():
            raise MissingFileError(f"ONNX graph {self.path} not found")
        verify_sha256(self.path, self.expected_sha256, REEXPORT)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(self.path), options, providers=self.providers())


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, load_session: Callable[[], Any], spec: GraphSpec) -> None:
        super().__init__(spec)
        self.load_session = load_session
        self.session: Any = None

    def activate_impl(self) -> None:
        session = self.load_session()
        found = {t.name: t.type for t in [*session.get_inputs(), *session.get_outputs()]}
        wanted = {t.name: ORT_TYPES.get(t.dtype, t.dtype) for t in [*self.spec.inputs, *self.spec.outputs]}
        if found != wanted:
            describe = lambda io: ", ".join(f"{name} {kind}" for name, kind in sorted(io.items()))  # noqa: E731
            raise ArtifactMismatch(
                f"the {self.spec.name} graph has {describe(found)}; the contract says {describe(wanted)}: "
                f"re-export it with `{REEXPORT}`"
            )
        self.session = session

    def infer_impl(self, feed: Feed) -> Outputs:
        names = list(self.spec.output_names)
        return dict(zip(names, self.session.run(names, feed), strict=True))

    def deactivate_impl(self) -> None:
        self.session = None
