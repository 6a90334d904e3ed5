"""ONNX Runtime backend: TensorRT, CUDA and CPU execution providers, in that order, when available."""

from __future__ import annotations

from pathlib import Path

from .onnxruntime_loader import import_onnxruntime
from .runner import Feeds, Runner, verify_sha256

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        expected_sha256: str | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.expected_sha256 = expected_sha256
        self.requested_providers = providers
        self.threads = threads
        self.session = None

    def providers(self) -> list[str]:
        available = import_onnxruntime().get_available_providers()
        wanted = self.requested_providers or list(PREFERRED_PROVIDERS)
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]

    def activate(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX graph {self.path} not found")
        verify_sha256(self.path, self.expected_sha256, "python -m export.to_onnx CKPT")
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=self.providers())
        self.output_names = [o.name for o in self.session.get_outputs()]
        super().activate()

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()

    def infer(self, feeds: Feeds) -> Feeds:
        assert self.session is not None
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
