"""What agff-serve checks and writes before Triton starts: the interpreter, the flags, the model repository."""

import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("pytriton", reason="agff-serve needs the serve extra: pip install -e '.[cpu,serve]'")

from agff_deploy.errors import InputError  # noqa: E402
from serve import tritonserver  # noqa: E402
from serve.cli import check_args, parse_args, settings_of  # noqa: E402
from serve.model_configs import read_config  # noqa: E402
from serve.repository import ServeSettings, write_serving_repository  # noqa: E402
from serve.tritonserver import ServeSetupError, TritonServer, free_ports  # noqa: E402


def test_a_python_without_a_shared_libpython_is_refused_with_the_reason(monkeypatch, tmp_path):
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: str(tmp_path) if name == "LIBDIR" else real(name))
    with pytest.raises(ServeSetupError) as refused:
        tritonserver.shared_libpython()
    message = str(refused.value)
    assert "_recursion_count" in message
    assert "/usr/bin/python3.11 -m venv" in message
    assert sys.executable in message


def test_the_stub_is_pointed_at_this_pythons_own_libpython():
    env = tritonserver.server_environment(tritonserver.pytriton_dist())
    first = Path(env["LD_LIBRARY_PATH"].split(":")[0])
    assert (first / sysconfig.get_config_var("INSTSONAME")).is_file()
    assert first == tritonserver.shared_libpython().parent
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_a_python_version_without_a_shipped_stub_is_refused(tmp_path):
    (tmp_path / "python_backend_stubs" / "3.8").mkdir(parents=True)
    with pytest.raises(ServeSetupError, match=r"stubs for Python 3\.8, not 3\.\d+"):
        tritonserver.stub_for_this_python(tmp_path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--http-port", "8000", "--grpc-port", "8000"], "must differ"),
        (["--http-port", "0"], "a port is 1 to 65535"),
        (["--max-batch", "0"], "--max-batch 0"),
        (["--instances", "0"], "--instances 0"),
        (["--max-queue-delay-ms", "-1"], "--max-queue-delay-ms"),
    ],
)
def test_bad_flags_are_refused_by_name(flags, message):
    with pytest.raises(InputError, match=message):
        check_args(parse_args(["--engine", "bundle", *flags]))


def test_instances_share_the_cores_unless_threads_are_given(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert settings_of(parse_args(["--engine", "b", "--instances", "4"])).threads == 4
    assert settings_of(parse_args(["--engine", "b", "--instances", "4", "--threads", "2"])).threads == 2


def test_the_serving_repository_holds_three_models_with_the_tensors_clients_send(tmp_path):
    settings = ServeSettings(tmp_path / "bundle", max_batch=32, max_queue_delay_ms=5, instances=2, threads=1)
    write_serving_repository(tmp_path / "models", settings, num_prompts=9, hidden_size=64)
    image, text, score = (read_config(tmp_path / "models" / m / "config.pbtxt") for m in ("image", "text", "score"))
    assert [(t.name, t.optional) for t in image.input] == [("image", False), ("instruction", True), ("task", True)]
    assert [list(t.dims) for t in image.output] == [[9, 64]]
    assert [(t.name, t.optional) for t in text.input] == [("text", False), ("task", True)]
    assert (image.max_batch_size, text.max_batch_size, score.max_batch_size) == (32, 32, 0)
    assert image.dynamic_batching.max_queue_delay_microseconds == 5000
    assert image.instance_group[0].count == 2
    assert image.parameters["engine"].string_value == str((tmp_path / "bundle").resolve())
    assert [list(t.dims) for t in score.input] == [[-1, 9, 64], [-1, 9, 64]]


def test_a_model_that_cannot_load_fails_start_up_with_tritons_error(tmp_path):
    settings = ServeSettings(tmp_path / "no-such-bundle")
    repository = write_serving_repository(tmp_path / "models", settings, num_prompts=9, hidden_size=64)
    http, grpc, metrics = free_ports(3)
    server = TritonServer(repository, tmp_path, tritonserver.Ports(http, grpc, metrics), "127.0.0.1")
    with pytest.raises(ServeSetupError, match="no-such-bundle"):
        server.start(timeout_s=60)
    assert server.process is not None and server.process.poll() is not None
