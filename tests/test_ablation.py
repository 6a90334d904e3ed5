"""bench.ablation: paired differences by training seed, the settings it refuses, the runs it trains or reuses,
the tables it prints."""

import json
import math

import pytest
import torch

from bench.ablation import (
    COMMAND_FILE,
    comparisons,
    main,
    markdown_tables,
    paired_differences,
    parse_args,
    reusable,
    training_args,
)
from train.trainer import STATE_FILE

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom


def test_paired_differences_give_the_mean_and_the_95_percent_t_interval():
    d = paired_differences([10.0, 20.0, 30.0], [11.0, 22.0, 33.0])  # differences 1, 2, 3: sd 1
    assert d["per_seed"] == [1.0, 2.0, 3.0]
    assert d["mean"] == pytest.approx(2.0)
    assert d["ci_low"] == pytest.approx(2.0 - T_975_2 / math.sqrt(3))
    assert d["ci_high"] == pytest.approx(2.0 + T_975_2 / math.sqrt(3))


def test_paired_differences_pair_by_seed_not_by_sorted_value():
    d = paired_differences([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])  # same values, other seeds: differences 2, 0, -2
    assert d["per_seed"] == [2.0, 0.0, -2.0]
    assert d["mean"] == pytest.approx(0.0)
    assert d["ci_high"] == pytest.approx(2.0 * T_975_2 / math.sqrt(3))


def test_paired_differences_refuse_lists_of_other_lengths():
    with pytest.raises(ValueError, match="equally long"):
        paired_differences([1.0, 2.0, 3.0], [1.0, 2.0])


def _refusal(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse_args(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_fewer_than_two_evaluation_seeds_are_refused(capsys):
    assert "--eval-seeds got 1 seed; it needs at least 2" in _refusal(capsys, "--eval-seeds", "7")


def test_fewer_than_two_training_seeds_are_refused(capsys):
    assert "--seeds got 1 seed; it needs at least 2" in _refusal(capsys, "--seeds", "0")


def test_an_unknown_variant_is_refused(capsys):
    assert "invalid choice: 'agff+magic'" in _refusal(capsys, "--variants", "baseline", "agff+magic")


def test_the_baseline_is_refused_anywhere_but_first(capsys):
    assert "baseline, when listed, must come first" in _refusal(capsys, "--variants", "agff", "baseline")


def test_an_evaluation_seed_may_equal_a_training_seed():
    args = parse_args(["--seeds", "7", "8", "--eval-seeds", "7", "11"])
    assert (args.seeds, args.eval_seeds, args.variants[0]) == ([7, 8], [7, 11], "baseline")


def _command(variant: str, *argv: str) -> list[str]:
    return training_args(variant, 3, parse_args(list(argv)))


def _value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_baseline_trains_a_single_embedding_without_ega():
    command = _command("baseline", "--num-fine", "4", "--alpha", "2")
    assert (_value(command, "--num-fine"), _value(command, "--ega-alpha"), _value(command, "--seed")) == ("0", "0", "3")


def test_agff_with_ega_trains_the_given_k_and_alpha():
    command = _command("agff+ega", "--num-fine", "4", "--alpha", "2")
    assert (_value(command, "--num-fine"), _value(command, "--ega-alpha")) == ("4", "2.0")


def test_agff_without_num_fine_keeps_the_presets_k_and_turns_ega_off():
    command = _command("agff")
    assert "--num-fine" not in command
    assert _value(command, "--ega-alpha") == "0"


def test_the_text_init_variant_initialises_prompts_from_aspects():
    command = _command("agff+ega+text-init", "--variants", "agff+ega", "agff+ega+text-init")
    assert (_value(command, "--prompt-init"), _value(command, "--ega-alpha")) == ("aspects", "1.0")
    assert "--prompt-init" not in _command("agff+ega")


def test_base_lora_and_frozen_backbone_pass_through_to_every_variant():
    argv = ("--base", "/models/qwen2-vl", "--lora-rank", "8", "--freeze-backbone", "--image-size", "224")
    for variant in ("baseline", "agff", "agff+ega"):
        command = _command(variant, *argv)
        assert (_value(command, "--base"), _value(command, "--lora-rank"), _value(command, "--image-size")) == (
            "/models/qwen2-vl",
            "8",
            "224",
        )
        assert "--freeze-backbone" in command


def test_batch_size_and_a_fixed_temperature_pass_through():
    command = _command("agff", "--batch-size", "256", "--temperature", "0.02", "--fixed-temperature")
    assert (_value(command, "--batch-size"), _value(command, "--temperature")) == ("256", "0.02")
    assert "--fixed-temperature" in command


def test_nothing_optional_is_passed_unless_given():
    command = set(_command("agff"))
    optional = {"--base", "--lora-rank", "--freeze-backbone", "--image-size", "--prompt-init", "--batch-size",
                "--temperature", "--fixed-temperature"}  # fmt: skip
    assert not optional & command


@pytest.fixture
def finished_run(tmp_path):
    """A run folder at step 10 whose command.json holds `--seed 0`."""
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 10}))
    (tmp_path / COMMAND_FILE).write_text(json.dumps(["--seed", "0"]))
    return tmp_path


def test_a_finished_run_of_the_same_command_is_reused(finished_run):
    assert reusable(finished_run, ["--seed", "0"], steps=10)


def test_a_run_of_another_command_is_retrained(finished_run):
    assert not reusable(finished_run, ["--seed", "1"], steps=10)


def test_a_run_short_of_the_steps_is_retrained(finished_run):
    assert not reusable(finished_run, ["--seed", "0"], steps=11)


def test_a_run_without_a_saved_command_is_retrained(finished_run):
    (finished_run / COMMAND_FILE).unlink()
    assert not reusable(finished_run, ["--seed", "0"], steps=10)


def _report() -> dict:
    def spread(mean: float, std: float) -> dict:
        return {"mean": mean, "std": std}

    summary = {
        "baseline": {"mmvp_mean": 0.40, "mmvp_std": 0.02, "i2t_r1_mean": 0.80, "i2t_r1_std": 0.05,
                     "t2i_r1_mean": 0.81, "t2i_r1_std": 0.04,
                     "per_pattern": {"colour": spread(0.9, 0.01), "shape": spread(0.3, 0.1)}},
        "agff+ega": {"mmvp_mean": 0.425, "mmvp_std": 0.01, "i2t_r1_mean": 0.79, "i2t_r1_std": 0.03,
                     "t2i_r1_mean": 0.8, "t2i_r1_std": 0.02,
                     "per_pattern": {"colour": spread(1.0, 0.0), "shape": spread(0.35, 0.05)}},
    }  # fmt: skip
    paired = {
        "agff+ega - baseline": {
            "mmvp": {"mean": 2.5, "ci_low": 0.4, "ci_high": 4.6, "per_seed": [1.2, 2.2, 4.1]},
            "i2t_r1": {"mean": -1.0, "ci_low": -3.0, "ci_high": 1.0, "per_seed": [-0.6, 0.0, -2.4]},
            "t2i_r1": {"mean": -1.0, "ci_low": -2.0, "ci_high": -0.04, "per_seed": [-1.0, -1.0, -1.0]},
        }
    }
    return {"settings": {"seeds": [0, 1, 2], "reference": "baseline"}, "summary": summary, "paired": paired}


def test_each_variant_is_compared_with_the_reference_and_with_what_it_adds_one_ingredient_to():
    variants = ["baseline", "baseline+ega", "agff", "agff+ega", "agff+ega+text-init"]
    assert comparisons(variants) == [
        ("baseline+ega", "baseline"),
        ("agff", "baseline"),
        ("agff+ega", "baseline"),
        ("agff+ega+text-init", "baseline"),
        ("agff+ega", "agff"),
        ("agff+ega+text-init", "agff+ega"),
    ]


def test_markdown_tables_render_the_variants_and_the_paired_differences():
    assert markdown_tables(_report()).splitlines() == [
        "| variant | MMVP mean | global i2t R@1 | global t2i R@1 | colour | shape |",
        "| --- | --- | --- | --- | --- | --- |",
        "| baseline | 40.0 ± 2.0 | 80.0 ± 5.0 | 81.0 ± 4.0 | 90.0 ± 1.0 | 30.0 ± 10.0 |",
        "| agff+ega | 42.5 ± 1.0 | 79.0 ± 3.0 | 80.0 ± 2.0 | 100.0 ± 0.0 | 35.0 ± 5.0 |",
        "",
        "| comparison | metric | mean difference (points) | 95% CI | per training seed (0, 1, 2) | CI above 0 |",
        "| --- | --- | --- | --- | --- | --- |",
        "| agff+ega - baseline | MMVP mean | +2.5 | [+0.4, +4.6] | +1.2, +2.2, +4.1 | yes |",
        "| agff+ega - baseline | global i2t R@1 | -1.0 | [-3.0, +1.0] | -0.6, +0.0, -2.4 | no |",
        "| agff+ega - baseline | global t2i R@1 | -1.0 | [-2.0, +0.0] | -1.0, -1.0, -1.0 | no |",
    ]


@pytest.fixture
def torch_threads():
    """bench.ablation sets this process's torch threads; the tests after it keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # 4 tiny trainings of 2 steps, two at a time, and 8 evaluations: about a minute on 2 cores
def test_an_ablation_on_the_tiny_preset_writes_every_run_and_the_paired_differences(tmp_path, capsys, torch_threads):
    settings = "--preset tiny --steps 2 --seeds 0 1 --eval-seeds 7 8 --variants baseline agff --pairs-per-pattern 2"
    argv = [*settings.split(), "--jobs", "2", "--out", str(tmp_path)]
    main(argv)
    report = json.loads((tmp_path / "ablation.json").read_text())
    runs = {(r["variant"], r["seed"], r["eval_seed"]): r for r in report["runs"]}
    assert sorted(runs) == [(v, s, e) for v in ("agff", "baseline") for s in (0, 1) for e in (7, 8)]
    assert list(report["paired"]) == ["agff - baseline"]

    def seed_points(variant: str, seed: int) -> float:
        return 100 * (runs[variant, seed, 7]["mmvp"] + runs[variant, seed, 8]["mmvp"]) / 2

    expected = [seed_points("agff", s) - seed_points("baseline", s) for s in (0, 1)]
    assert report["paired"]["agff - baseline"]["mmvp"]["per_seed"] == pytest.approx(expected)
    saved = json.loads((tmp_path / "agff-seed1" / COMMAND_FILE).read_text())
    assert saved == training_args("agff", 1, parse_args(argv))
    assert (tmp_path / "ablation.png").stat().st_size > 0
    assert markdown_tables(report) in capsys.readouterr().out


def test_without_matplotlib_the_tables_and_json_are_written_and_the_chart_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bench.ablation.find_spec", lambda name: None if name == "matplotlib" else object())
    monkeypatch.setattr("bench.ablation.run_all", lambda args, started: _runs(args.seeds, args.eval_seeds))
    main(["--seeds", "0", "1", "--eval-seeds", "7", "8", "--variants", "baseline", "agff", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert printed.startswith("warning: matplotlib is not installed; the tables and ablation.json will be written")
    assert json.loads((tmp_path / "ablation.json").read_text())["paired"]["agff - baseline"]["mmvp"]["mean"] == 10.0
    assert not (tmp_path / "ablation.png").exists()


def _runs(seeds, eval_seeds):
    """Evaluations in which agff scores 10 points of MMVP above the baseline at every seed."""
    return [
        {"variant": variant, "seed": seed, "eval_seed": e, "mmvp": mmvp, "i2t_r1": 0.5, "t2i_r1": 0.5,
         "per_pattern": {"colour": mmvp}}
        for variant, mmvp in (("baseline", 0.3), ("agff", 0.4)) for seed in seeds for e in eval_seeds
    ]  # fmt: skip
