"""`python -m agff_deploy.base`: a full-size Qwen2-VL base folder without a hub, loaded as a real one would be."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from agff_deploy.base import ARCHITECTURES, _parameters, architecture_config, main, random_weights
from agff_deploy.model import load_base_folder
from agff_deploy.weights import INDEX_FILE, weight_files


def test_the_base_has_the_published_widths_and_the_requested_depth(reduced_base):
    config = json.loads((reduced_base / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    published = ARCHITECTURES["qwen2-vl-2b"].architectures["qwen2-vl-2b"]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert text[key] == published.text[key], key
    assert (vision["embed_dim"], vision["num_heads"], vision["hidden_size"]) == (1280, 16, 1536)
    assert (text["num_hidden_layers"], vision["depth"]) == (2, 2)
    assert config["model_type"] == "qwen2_vl" and config["tie_word_embeddings"] is True


def test_the_base_is_sharded_safetensors_with_tokenizer_and_preprocessor_files(reduced_base):
    names = {p.name for p in reduced_base.iterdir()}
    assert {"config.json", INDEX_FILE, "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= names
    assert len(weight_files(reduced_base)) > 1


def test_the_full_size_config_has_about_2_2_billion_parameters():
    count = sum(shape.numel() for *_, shape in _parameters(architecture_config("qwen2-vl-2b")))
    assert 2.15e9 < count < 2.25e9, count


def test_weight_names_are_those_save_pretrained_writes():
    config = Qwen2VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": 128},
        vision_config={"embed_dim": 16, "depth": 1, "num_heads": 2, "hidden_size": 32},
        tie_word_embeddings=True,
    )  # fmt: skip
    expected = set(Qwen2VLForConditionalGeneration(config).state_dict())
    expected.discard("lm_head.weight")
    live_to_saved = {"model.language_model.": "model.", "model.visual.": "visual."}
    for live, saved in live_to_saved.items():
        expected = {saved + n[len(live) :] if n.startswith(live) else n for n in expected}
    assert {name for name, _ in random_weights(config, seed=0)} == expected


def test_the_base_loads_through_the_real_folder_path_with_its_weights_unchanged(reduced_base):
    model = load_base_folder(reduced_base)
    index = json.loads((reduced_base / INDEX_FILE).read_text())["weight_map"]
    name = "model.layers.0.mlp.gate_proj.weight"
    with safe_open(reduced_base / index[name], "pt") as f:
        stored = f.get_tensor(name)
    loaded = model.language_model.layers[0].mlp.gate_proj.weight
    assert torch.equal(loaded, stored.float())
    assert abs(float(loaded.detach().std()) - 0.02) < 1e-3
    assert torch.equal(model.language_model.norm.weight, torch.ones(1536))


def test_the_cli_refuses_a_depth_below_one(tmp_path, capsys):
    assert main(["qwen2-vl-2b", str(tmp_path / "b"), "--layers", "0"]) == 2
    assert "--layers must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_base_with_a_missing_shard_is_refused_naming_the_file(tmp_path, reduced_base):
    broken = tmp_path / "broken"
    shutil.copytree(reduced_base, broken)
    shard = weight_files(broken)[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard.name} is missing"):
        load_base_folder(broken)
