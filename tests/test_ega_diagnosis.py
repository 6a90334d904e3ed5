"""bench.ega_diagnosis: the settings it trains, their train.run flags, and what it reads back from a run's log."""

import json

import pytest

from agff_deploy.errors import ArtifactError
from bench.ega_diagnosis import WINDOWS, diagnosis_table, parse_args, run_command, settings_grid, training_curves
from train.trainer import LOG_FILE


def _args(*argv: str):
    return parse_args(["--base", "/models/base", "--alphas", "0", "1", "--temperatures", "0.02", "--batches", "32",
                       *argv])  # fmt: skip


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_grid_sweeps_alpha_and_runs_each_temperature_and_batch_with_and_without_ega():
    assert settings_grid(_args()) == {
        "alpha-0": {"alpha": 0.0},
        "alpha-1": {"alpha": 1.0},
        "fixed-0.02-alpha-0": {"alpha": 0.0, "temperature": 0.02, "fixed_temperature": True},
        "batch-32-alpha-0": {"alpha": 0.0, "batch_size": 32},
        "fixed-0.02-alpha-1": {"alpha": 1.0, "temperature": 0.02, "fixed_temperature": True},
        "batch-32-alpha-1": {"alpha": 1.0, "batch_size": 32},
    }


def test_a_fixed_temperature_run_trains_the_fused_recipe_with_its_temperature_held():
    command = run_command(_args(), {"alpha": 1.0, "temperature": 0.02, "fixed_temperature": True})
    assert (_value(command, "--ega-alpha"), _value(command, "--temperature")) == ("1.0", "0.02")
    assert (_value(command, "--base"), _value(command, "--seed")) == ("/models/base", "100")
    assert "--fixed-temperature" in command and "--num-fine" not in command


def test_alpha_zero_turns_ega_off_and_leaves_the_temperature_learned():
    command = run_command(_args(), {"alpha": 0.0})
    assert _value(command, "--ega-alpha") == "0"
    assert not {"--temperature", "--fixed-temperature", "--batch-size"} & set(command)


def test_gradcache_chunks_only_the_batches_larger_than_a_chunk():
    args = _args("--chunk-size", "128")
    assert _value(run_command(args, {"alpha": 1.0, "batch_size": 1024}), "--chunk-size") == "128"
    assert "--chunk-size" not in run_command(args, {"alpha": 1.0, "batch_size": 32})


def test_training_curves_average_the_log_over_tenths_of_the_run(tmp_path):
    rows = [{"step": s, "hard_share": s / 100, "temperature": 0.05, "loss": 1.0} for s in range(1, 101)]
    (tmp_path / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves(tmp_path)
    assert curves["hard_share"] == pytest.approx([(10 * i + 5.5) / 100 for i in range(WINDOWS)])
    assert curves["temperature"] == pytest.approx([0.05] * WINDOWS)


def test_the_table_gives_each_runs_metrics_end_temperature_and_hardness_early_midway_late():
    run = {"name": "alpha-1", "mmvp": 0.4, "i2t_r1": 0.85, "t2i_r1": 0.8,
           "curves": {"hard_share": [0.1, 0.05, 0.02, 0.01], "temperature": [0.05, 0.03]}}  # fmt: skip
    assert (
        diagnosis_table([run]).splitlines()[2] == "| alpha-1 | 40.0 | 85.0 | 80.0 | 0.0300 | 10.00% | 2.00% | 1.00% |"
    )


def test_a_step_logged_twice_by_a_resumed_run_counts_once(tmp_path):
    rows = [{"step": s, "hard_share": 0.5, "temperature": 0.05, "loss": 1.0} for s in (1, 2, 3, 2, 3, 4)]
    rows[3]["hard_share"] = rows[4]["hard_share"] = 0.1  # the resumed run's steps 2 and 3
    (tmp_path / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert training_curves(tmp_path, windows=2)["hard_share"] == pytest.approx([0.3, 0.3])


def test_a_log_without_the_hard_share_is_refused_naming_the_folder_to_retrain(tmp_path):
    (tmp_path / LOG_FILE).write_text(json.dumps({"step": 1, "loss": 1.0, "temperature": 0.05}) + "\n")
    with pytest.raises(ArtifactError, match=f"delete {tmp_path} to retrain"):
        training_curves(tmp_path)


def test_alpha_must_be_one_of_the_swept_alphas(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--alphas", "0", "2", "--alpha", "1"])
    assert "--alphas must hold 0 and --alpha 1" in capsys.readouterr().err
