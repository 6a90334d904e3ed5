import json
import math

import pytest
import torch
from safetensors.torch import load_file

from agff_deploy.checkpoint import WEIGHTS_FILE, load_checkpoint
from agff_deploy.errors import InputError
from train.run import main
from train.trainer import LOG_FILE, STATE_FILE, Trainer, TrainSettings, learning_rate


def tiny(out, **kw):
    return TrainSettings(
        **{"out": str(out), "preset": "tiny", "steps": 4, "batch_size": 8, "save_every": 2, "eval_pairs": 0, **kw}
    )


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    Trainer.create(tiny(tmp_path / "straight")).run()
    Trainer.create(tiny(tmp_path / "split")).run(until=2)
    assert json.loads((tmp_path / "split" / STATE_FILE).read_text())["step"] == 2
    Trainer.resume(tmp_path / "split").run()
    straight = load_file(tmp_path / "straight" / WEIGHTS_FILE)
    resumed = load_file(tmp_path / "split" / WEIGHTS_FILE)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_a_checkpoint_whose_files_disagree(tmp_path):
    Trainer.create(tiny(tmp_path)).run(until=2)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    (tmp_path / STATE_FILE).write_text(json.dumps(dict(state, step=3)))
    with pytest.raises(ValueError, match="is from step 2, trainer_state.json says 3"):
        Trainer.resume(tmp_path)


def test_resume_without_a_run_says_how_to_start_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="start a run with"):
        Trainer.resume(tmp_path)


def test_training_lowers_the_loss_on_built_in_scenes(tmp_path):
    trainer = Trainer.create(tiny(tmp_path, steps=40, batch_size=16, lr=3e-3, warmup=5))
    losses = [trainer.train_step() for _ in range(40)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2


def test_a_fixed_temperature_stays_where_it_starts_while_a_learned_one_moves(tmp_path):
    fixed = Trainer.create(tiny(tmp_path / "fixed", temperature=0.02, fixed_temperature=True, steps=3))
    learned = Trainer.create(tiny(tmp_path / "learned", temperature=0.02, steps=3))
    for trainer in (fixed, learned):
        trainer.run()
    start = torch.tensor(math.log(0.02))  # float32, as the parameter holds it
    assert torch.equal(fixed.model.log_temperature.detach(), start)
    assert not torch.equal(learned.model.log_temperature.detach(), start)


def test_a_temperature_below_the_models_floor_is_refused(tmp_path):
    with pytest.raises(InputError, match="--temperature 0.005: the model holds it at 0.01 or above"):
        Trainer.create(tiny(tmp_path, temperature=0.005))


def test_the_log_records_each_steps_share_of_hard_negatives(tmp_path):
    Trainer.create(tiny(tmp_path, steps=2)).run()
    shares = [json.loads(line)["hard_share"] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(shares) == 2 and all(0.0 <= share <= 1.0 for share in shares)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    s = TrainSettings(steps=100, warmup=10, lr=1.0)
    assert learning_rate(s, 0) == pytest.approx(0.1)
    assert learning_rate(s, 9) == pytest.approx(1.0)
    assert learning_rate(s, 100) == pytest.approx(0.1)


def test_the_cli_trains_writes_a_log_and_reports_held_out_accuracy(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["--preset", "tiny", "--steps", "3", "--batch-size", "8", "--eval-pairs", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out image->caption R@1 among 16:" in printed and "colour      pair accuracy" in printed
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    load_checkpoint(out)


def test_single_embedding_baseline_trains_one_prompt(tmp_path):
    trainer = Trainer.create(tiny(tmp_path, num_fine=0, steps=1))
    trainer.run()
    assert trainer.model.prompts.vectors.shape[0] == 1
    assert load_checkpoint(tmp_path)[0].config.num_fine == 0


@pytest.mark.parametrize("tasks", ["vqa", "cls", "i2t:1,vqa:1,cls:1"])
def test_every_built_in_task_trains(tmp_path, tasks):
    trainer = Trainer.create(tiny(tmp_path, tasks=tasks, steps=3))
    assert all(torch.isfinite(torch.tensor(trainer.train_step())) for _ in range(3))


def test_training_on_mmeb_rows_mixes_image_and_text_candidates(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (40, 40), colour).save(tmp_path / "img" / f"{i}.png")
        rows.append({"qry": f"<|image_1|> a {colour} picture", "qry_image_path": f"img/{i}.png", "pos_text": colour})
        rows.append({"qry": f"find {colour}", "qry_image_path": "", "pos_text": "", "pos_image_path": f"img/{i}.png"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer.create(tiny(tmp_path / "out", data=str(tmp_path / "train.jsonl"), steps=2))
    trainer.run()
    assert trainer.step == 2


def test_lora_training_saves_merged_weights_that_reproduce_the_adapted_model(tmp_path):
    trainer = Trainer.create(tiny(tmp_path, lora_rank=2, steps=2, lr=1e-2))
    frozen = {n: p.clone() for n, p in trainer.model.mllm.named_parameters() if not p.requires_grad}
    trainer.run()
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.mllm.named_parameters() if n in frozen)
    inputs = trainer.encoder.inputs(["a red circle", "a star"])
    with torch.no_grad():
        adapted = trainer.model.eval()(inputs.input_ids, inputs.attention_mask)
        merged = load_checkpoint(tmp_path)[0](inputs.input_ids, inputs.attention_mask)
    assert (adapted - merged).abs().max().item() < 1e-5


def test_cli_resume_keeps_the_runs_own_step_count(tmp_path, capsys):
    args = ["--preset", "tiny", "--batch-size", "8", "--eval-pairs", "0", "--out", str(tmp_path)]
    assert main([*args, "--steps", "2"]) == 0
    assert main(["--resume", "--out", str(tmp_path), "--eval-pairs", "0"]) == 0
    assert json.loads((tmp_path / STATE_FILE).read_text())["step"] == 2
    assert "trained to step 2" in capsys.readouterr().out


def test_gradient_checkpointing_gives_the_gradients_of_a_plain_step(tiny_model, encoder):
    import copy

    from tests.conftest import scene_images

    inputs = encoder.inputs(["", "what colour?"], scene_images(2, 56, 5))
    grads = []
    for recompute in (False, True):
        model = copy.deepcopy(tiny_model).train()
        if recompute:
            model.enable_gradient_checkpointing()
        model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.image_grid).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    plain, recomputed = grads
    assert plain.keys() == recomputed.keys() and any("visual" in n for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_cli_refuses_to_train_over_an_existing_checkpoint_and_leaves_it_untouched(tmp_path, capsys):
    args = ["--preset", "tiny", "--steps", "1", "--batch-size", "8", "--eval-pairs", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    weights = (tmp_path / WEIGHTS_FILE).read_bytes()
    capsys.readouterr()
    assert main([*args, "--steps", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {tmp_path} already holds files (an earlier run?); continue that run with --resume, "
        "replace it with --overwrite, or choose another --out"
    ]
    assert (tmp_path / WEIGHTS_FILE).read_bytes() == weights
    assert json.loads((tmp_path / STATE_FILE).read_text())["step"] == 1


def test_cli_overwrite_replaces_the_earlier_run_with_a_fresh_one(tmp_path):
    args = ["--preset", "tiny", "--batch-size", "8", "--eval-pairs", "0", "--out", str(tmp_path)]
    assert main([*args, "--steps", "3"]) == 0
    assert main([*args, "--steps", "2", "--overwrite"]) == 0
    rows = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads((tmp_path / STATE_FILE).read_text())["step"] == 2


def test_cli_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "ckpt").write_text("")
    assert main(["--preset", "tiny", "--out", str(tmp_path / "ckpt")]) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'ckpt'} is a file; choose a folder\n"


def test_cli_resume_without_a_run_is_an_error_line_that_says_how_to_start_one(tmp_path, capsys):
    (tmp_path / LOG_FILE).write_text("")
    assert main(["--resume", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: {tmp_path / STATE_FILE} not found; "
        f"start a run with `python -m train.run --out {tmp_path} --overwrite`\n"
    )
