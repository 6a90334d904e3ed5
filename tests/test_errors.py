"""Users' mistakes are `AgffError`s: one `error:` line and exit status 2 from every command, and still the builtin
exceptions callers caught before the family existed."""

import pytest

from agff_deploy.errors import (
    AgffError,
    ArtifactError,
    InputError,
    MissingDependencyError,
    MissingFileError,
    NotInBundleError,
    print_error,
)
from agff_deploy.images import ImageLoadError
from export import to_onnx
from train.run import main as train_main


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (InputError, ValueError),
        (ImageLoadError, ValueError),
        (MissingFileError, FileNotFoundError),
        (ArtifactError, ValueError),
        (NotInBundleError, KeyError),
        (MissingDependencyError, ImportError),
    ],
)
def test_each_error_is_an_agff_error_and_the_builtin_callers_caught_before(error, builtin):
    assert issubclass(error, AgffError) and issubclass(error, builtin)


def test_a_precision_a_bundle_lacks_reads_as_a_sentence_not_a_quoted_key():
    assert str(NotInBundleError("bundle has no fp8 graphs")) == "bundle has no fp8 graphs"


def test_print_error_writes_one_error_line_and_returns_status_2(capsys):
    assert print_error(MissingFileError("ckpt/model.safetensors is missing")) == 2
    assert capsys.readouterr().err == "error: ckpt/model.safetensors is missing\n"


def test_train_run_reports_an_unknown_task_as_one_error_line_with_status_2(tmp_path, capsys):
    assert train_main(["--preset", "tiny", "--tasks", "ocr", "--out", str(tmp_path / "ckpt")]) == 2
    assert capsys.readouterr().err == "error: --tasks: unknown task 'ocr'; tasks are i2t, i2t-contrast, vqa, cls\n"


def test_a_cli_lets_a_bug_escape_with_its_traceback_instead_of_an_error_line(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(to_onnx, "load_checkpoint", broken)
    with pytest.raises(ValueError, match="a bug") as raised:
        to_onnx.main([str(tmp_path / "ckpt")])
    assert not isinstance(raised.value, AgffError)
    assert "error:" not in capsys.readouterr().err
