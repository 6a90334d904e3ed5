"""`python -m agff_deploy.eval` around a stand-in evaluation: arguments, the JSON file and error lines."""

import json

import pytest

from agff_deploy.errors import MissingFileError
from agff_deploy.eval import __main__ as cli

GLOBAL_RESULT = {
    "items": 4,
    "image_to_text": {"R@1": 0.5, "R@5": 1.0},
    "text_to_image": {"R@1": 0.25, "R@5": 1.0},
    "source": {"path": "ckpt", "backend": "torch", "precision": "fp32"},
}


@pytest.fixture()
def calls(monkeypatch):
    """The arguments each `evaluate` call received; the call returns GLOBAL_RESULT at once."""
    received = []

    def fake_evaluate(source, bench, seed, *rest):
        received.append({"source": source, "bench": bench, "seed": seed})
        return dict(GLOBAL_RESULT)

    monkeypatch.setattr(cli, "evaluate", fake_evaluate)
    return received


def test_the_evaluation_seed_defaults_to_seven(calls):
    assert cli.main(["ckpt", "--bench", "synthetic-global"]) == 0
    assert calls[0]["seed"] == 7


def test_json_goes_into_a_folder_created_for_it(calls, tmp_path):
    out = tmp_path / "out" / "missing" / "x.json"
    assert cli.main(["ckpt", "--bench", "synthetic-global", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["image_to_text"] == {"R@1": 0.5, "R@5": 1.0}


def test_a_json_path_that_cannot_be_created_is_refused_before_evaluating(calls, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "x.json"
    assert cli.main(["ckpt", "--bench", "synthetic-global", "--json", str(out)]) == 2
    assert calls == []
    err = capsys.readouterr().err
    assert err.startswith(f"error: --json {out}: cannot create the folder {tmp_path / 'taken'}")
    assert len(err.splitlines()) == 1


def test_a_json_path_that_is_a_folder_is_refused_before_evaluating(calls, tmp_path, capsys):
    assert cli.main(["ckpt", "--bench", "synthetic-global", "--json", str(tmp_path)]) == 2
    assert calls == []
    assert capsys.readouterr().err == (
        f"error: --json {tmp_path} is a folder; give a file name such as {tmp_path / 'result.json'}\n"
    )


def test_a_users_mistake_raised_while_evaluating_is_one_error_line_with_status_2(monkeypatch, capsys):
    def missing_data(*args):
        raise MissingFileError("MMEB folder mmeb/ not found")

    monkeypatch.setattr(cli, "evaluate", missing_data)
    assert cli.main(["ckpt", "--bench", "mmeb", "--data", "mmeb"]) == 2
    assert capsys.readouterr().err == "error: MMEB folder mmeb/ not found\n"


def test_a_bug_raised_while_evaluating_keeps_its_traceback(monkeypatch):
    def bug(*args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "evaluate", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["ckpt", "--bench", "synthetic-global"])
