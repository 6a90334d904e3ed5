"""runtime/ and the shared torch-free pieces import on a host without torch or transformers."""

import json
import subprocess
import sys
import textwrap


def run_blocking(modules: list[str], code: str) -> subprocess.CompletedProcess:
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ImportError(f"{{name}} is blocked for this test")
        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True)


def test_runtime_and_shared_preprocessing_import_without_torch_or_transformers():
    result = run_blocking(
        ["torch", "transformers"],
        """
        import runtime.cli, runtime.embedder, runtime.index, runtime.loading, runtime.ort_runner, runtime.trt_runner
        import runtime.pipeline, runtime.input_files, agff_deploy.contract, agff_deploy.manifest, agff_deploy.feeds
        from agff_deploy.tokenization import ChatFormatter
        from agff_deploy.preprocessing import ImagePreprocessor
        import numpy as np
        print(ImagePreprocessor(28, 28).normalize(np.zeros((28, 28, 3), np.uint8)).shape)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 28, 28)"


def test_the_tensorrt_build_and_its_parity_gate_import_without_torch():
    """A Jetson builds and gates engines with TensorRT, ONNX Runtime and onnx only."""
    result = run_blocking(["torch", "transformers"], "import export.to_trt, export.check")
    assert result.returncode == 0, result.stderr


def test_loading_a_model_does_not_import_the_embedder_that_uses_it():
    result = run_blocking([], "import sys, runtime.loading; print('runtime.embedder' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr


def test_a_missing_onnxruntime_names_the_extra_to_install():
    result = run_blocking(
        ["onnxruntime"],
        """
        from runtime.onnxruntime_loader import import_onnxruntime
        try:
            import_onnxruntime()
        except ImportError as err:
            print(err)
        """,
    )
    assert "pip install 'agff-deploy[cpu]'" in result.stdout
    assert "pip install 'agff-deploy[gpu]'" in result.stdout


def test_agff_run_embeds_with_an_onnx_bundle_when_torch_cannot_be_imported(tiny_bundle, tmp_path):
    from PIL import Image

    Image.new("RGB", (80, 60), "red").save(tmp_path / "red.png")
    args = ["--engine", str(tiny_bundle), str(tmp_path / "red.png"), "--text", "a red circle", "--quiet"]
    result = run_blocking(
        ["torch", "transformers"],
        f"""
        import sys
        from runtime.cli import main
        sys.exit(main({args!r}))
        """,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["embedded"] == 2 and len(summary["scores"]) == 1
