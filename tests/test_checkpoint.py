import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from agff_deploy.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from agff_deploy.config import CONFIG_FILE, AGFFConfig
from agff_deploy.model import load_base_folder
from agff_deploy.presets import preset_config
from train.trainer import Trainer, TrainSettings


def embed(model, encoder, texts):
    inputs = encoder.inputs(texts)
    with torch.no_grad():
        return model(inputs.input_ids, inputs.attention_mask)


def test_a_saved_checkpoint_loads_to_the_same_outputs(tmp_path, tiny_model, tokenizer, encoder):
    save_checkpoint(tiny_model, tokenizer, tmp_path / "ckpt")
    loaded, loaded_tokenizer = load_checkpoint(tmp_path / "ckpt")
    texts = ["a red circle", "two blue squares at the left"]
    assert torch.equal(embed(loaded, encoder, texts), embed(tiny_model, encoder, texts))
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= names


def test_config_round_trips_through_json(tmp_path, tiny_model):
    tiny_model.config.save(tmp_path)
    again = AGFFConfig.load(tmp_path)
    assert again == tiny_model.config
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["num_fine"] == tiny_model.config.num_fine


def test_a_missing_weights_file_is_named_in_the_error(tmp_path, tiny_model, tokenizer):
    save_checkpoint(tiny_model, tokenizer, tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_FILE} is missing"):
        load_checkpoint(tmp_path)


def test_a_corrupt_weights_file_is_named_in_the_error(tmp_path, tiny_model, tokenizer):
    save_checkpoint(tiny_model, tokenizer, tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path)


def test_an_image_size_off_the_patch_grid_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="not a positive multiple of patch_size\\*spatial_merge_size = 28"):
        preset_config("tiny", tokenizer, image_size=(50, 56))


@pytest.fixture()
def hf_folder(tmp_path, tokenizer):
    torch.manual_seed(3)
    base = preset_config("tiny", tokenizer).base
    model = Qwen2VLForConditionalGeneration._from_config(Qwen2VLConfig.from_dict(base))
    folder = tmp_path / "qwen2vl"
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, model


def test_base_folder_backbone_loads_with_its_weights_unchanged(tmp_path, hf_folder):
    folder, hf_model = hf_folder
    trainer = Trainer.create(TrainSettings(out=str(tmp_path / "out"), preset="tiny", base=str(folder), steps=1))
    ours = trainer.model.mllm.state_dict()
    for name, value in hf_model.model.state_dict().items():
        assert torch.equal(ours[name], value), name
    assert trainer.model.config.base_path == str(folder)


def test_training_from_a_base_folder_writes_a_loadable_checkpoint(tmp_path, hf_folder):
    folder, _ = hf_folder
    out = tmp_path / "out"
    Trainer.create(TrainSettings(out=str(out), preset="tiny", base=str(folder), steps=1, batch_size=4)).run()
    model, _ = load_checkpoint(out)
    assert set(load_file(out / WEIGHTS_FILE)) == set(model.state_dict())


def test_an_unsupported_base_architecture_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="model_type 'llava' is not supported"):
        load_base_folder(tmp_path)


def test_a_base_folder_without_config_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="a model folder in the save_pretrained layout holds config.json"):
        load_base_folder(tmp_path)
