import numpy as np
import pytest
import torch

from agff_deploy.base import write_backbone_files
from agff_deploy.errors import InputError
from agff_deploy.eval.synthetic import pattern_name
from agff_deploy.model import load_base_folder
from agff_deploy.prompts import ASPECT_TEXTS
from agff_deploy.scenes import ANSWER_OPTIONS, make_scene
from train import generative_probe
from train.generative import IGNORED, Example, SceneExamples, encode_examples
from train.generative_probe import probe_answers
from train.trainer import Trainer, TrainSettings


def tiny(out, **kw):
    return TrainSettings(**{"out": str(out), "preset": "tiny", "steps": 4, "batch_size": 8, "eval_pairs": 0, **kw})


def test_only_the_answer_and_its_end_token_carry_labels(encoder, tokenizer):
    image = make_scene(0).render(56)
    batch = encode_examples(encoder, [Example("what colour is it?", image, "red"), Example("", image, "a beach")])
    answer = tokenizer.encode("red", add_special_tokens=False).ids + [tokenizer.token_to_id("<|im_end|>")]
    length = int(batch.attention_mask[0].sum())
    assert batch.labels[0][batch.labels[0] != IGNORED].tolist() == answer
    assert batch.input_ids[0, length - len(answer) : length].tolist() == answer
    assert bool((batch.labels[batch.attention_mask == 0] == IGNORED).all())


def test_the_generative_pass_never_sees_a_later_token(tiny_model):
    ids = torch.randint(10, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    changed = ids.clone()
    changed[:, 8] = 5
    before, after = tiny_model.token_states(ids, mask), tiny_model.token_states(changed, mask)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-6)
    assert not torch.allclose(before[:, 8], after[:, 8], atol=1e-3)


def test_pretraining_examples_depend_on_seed_and_step_alone():
    a, b = SceneExamples(3, 6, 56).batch(5), SceneExamples(3, 6, 56).batch(5)
    assert [(e.question, e.answer) for e in a] == [(e.question, e.answer) for e in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert [e.answer for e in SceneExamples(3, 6, 56).batch(6)] != [e.answer for e in a]


def test_pretraining_mixes_captions_and_answers():
    examples = SceneExamples(0, 64, 56).batch(0)
    captions = sum(e.question == "" for e in examples)
    assert 16 < captions < 48


def test_pretraining_lowers_the_next_token_loss(tmp_path):
    trainer = Trainer.create(tiny(tmp_path, objective="lm", steps=30, batch_size=16, lr=3e-3, warmup=3))
    losses = [trainer.train_step() for _ in range(30)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_pretraining_trains_the_backbone_and_nothing_else(tmp_path):
    trainer = Trainer.create(tiny(tmp_path, objective="lm"))
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("mllm.") for n in trained)
    assert not trainer.model.prompts.vectors.requires_grad


def test_a_pretraining_run_writes_a_base_folder_that_base_loads_unchanged(tmp_path):
    trainer = Trainer.create(tiny(tmp_path / "base", objective="lm"))
    trainer.run()
    loaded = load_base_folder(tmp_path / "base").state_dict()
    trained = trainer.model.mllm.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


def test_the_base_folder_ties_the_output_layer_to_the_input_embedding(tmp_path, tiny_model, tokenizer):
    write_backbone_files(tmp_path, tiny_model.mllm, tokenizer, (56, 56))
    from transformers import Qwen2VLForConditionalGeneration

    full = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True)
    assert torch.equal(full.lm_head.weight, tiny_model.mllm.language_model.embed_tokens.weight)


def test_a_resumed_pretraining_run_ends_where_an_uninterrupted_one_does(tmp_path):
    Trainer.create(tiny(tmp_path / "straight", objective="lm", save_every=2)).run()
    Trainer.create(tiny(tmp_path / "split", objective="lm", save_every=2)).run(until=2)
    Trainer.resume(tmp_path / "split").run()
    straight = load_base_folder(tmp_path / "straight").state_dict()
    resumed = load_base_folder(tmp_path / "split").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("flag", [{"lora_rank": 2}, {"freeze_backbone": True}, {"chunk_size": 4}])
def test_pretraining_refuses_fine_tuning_options(tmp_path, flag):
    with pytest.raises(InputError, match="--objective lm trains the whole backbone"):
        Trainer.create(tiny(tmp_path, objective="lm", **flag))


def test_the_probe_asks_every_question_and_knows_its_chance(tiny_model, encoder):
    report = probe_answers(tiny_model, encoder, num_scenes=6)
    asked = [a for i in range(6) for a, _, _ in make_scene(910_000_000 + i, held_out=True).question_items()]
    assert sum(report.questions.values()) == len(asked)
    assert report.chance["colour"] == 1 / len(ANSWER_OPTIONS["colour"])
    assert report.chance["orientation" if "orientation" in report.chance else "size"] in (0.25, 0.5)


def test_the_probe_answers_each_question_with_its_best_scored_option(tiny_model, encoder, monkeypatch):
    # every option scores the same, so the first option is chosen: accuracy is the share of right answers listed first
    monkeypatch.setattr(generative_probe, "answer_log_probs", lambda model, batch: torch.zeros(len(batch.input_ids), 1))
    report = probe_answers(tiny_model, encoder, num_scenes=6)
    first: dict[str, list[bool]] = {}
    for i in range(6):
        for attribute, _, answer in make_scene(generative_probe.PROBE_SEED_OFFSET + i, held_out=True).question_items():
            first.setdefault(pattern_name(attribute), []).append(answer == ANSWER_OPTIONS[attribute][0])
    assert report.accuracy == {name: sum(hits) / len(hits) for name, hits in first.items()}


def test_a_frozen_backbone_stays_unchanged_while_the_prompts_train(tmp_path):
    trainer = Trainer.create(tiny(tmp_path, freeze_backbone=True))
    backbone = {k: v.clone() for k, v in trainer.model.mllm.state_dict().items()}
    prompts = trainer.model.prompts.vectors.detach().clone()
    trainer.train_step()
    assert all(torch.equal(v, trainer.model.mllm.state_dict()[k]) for k, v in backbone.items())
    assert not torch.equal(prompts, trainer.model.prompts.vectors)


def test_aspect_initialisation_starts_each_fine_prompt_at_its_phrase(tmp_path, tokenizer):
    model = Trainer.create(tiny(tmp_path, prompt_init="aspects", num_fine=2)).model
    table = model.mllm.language_model.embed_tokens.weight
    for k, text in enumerate(ASPECT_TEXTS[:2], start=1):
        ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids)
        assert torch.allclose(model.prompts.vectors[k, 0], table[ids].mean(dim=0))


def test_aspect_initialisation_refuses_more_prompts_than_aspects(tmp_path):
    with pytest.raises(InputError, match=f"names {len(ASPECT_TEXTS)} aspects"):
        Trainer.create(tiny(tmp_path, prompt_init="aspects", num_fine=len(ASPECT_TEXTS) + 1))


def test_freezing_and_lora_together_are_refused(tmp_path):
    with pytest.raises(InputError, match="LoRA already freezes the backbone"):
        Trainer.create(tiny(tmp_path, freeze_backbone=True, lora_rank=2))
