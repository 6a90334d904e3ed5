"""`python -m agff_deploy.base`: a full-size Qwen2-VL or Qwen3-VL base folder without a hub, loaded as a real one
would be."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration

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


def test_the_qwen3_vl_base_has_the_published_widths_and_its_deepstack_taps_inside_the_shorter_tower(
    reduced_qwen3_base,
):
    config = json.loads((reduced_qwen3_base / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    published = ARCHITECTURES["qwen3-vl-2b"].architectures["qwen3-vl-2b"]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert text[key] == published.text[key], key
    assert (vision["hidden_size"], vision["out_hidden_size"], vision["patch_size"]) == (1024, 2048, 16)
    assert (text["num_hidden_layers"], vision["depth"], vision["deepstack_visual_indexes"]) == (3, 3, [0, 1, 2])
    assert config["model_type"] == "qwen3_vl" and config["tie_word_embeddings"] is True
    assert text["rope_parameters"]["mrope_section"] == [24, 20, 20]
    assert text["rope_parameters"]["rope_theta"] == 5000000.0


def test_the_full_size_qwen3_vl_config_has_about_2_1_billion_parameters():
    count = sum(shape.numel() for *_, shape in _parameters(architecture_config("qwen3-vl-2b")))
    assert 2.05e9 < count < 2.2e9, count


def test_qwen3_vl_weight_names_are_those_save_pretrained_writes():
    config = Qwen3VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 128},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "depth": 2, "num_heads": 2, "out_hidden_size": 32,
                       "num_position_embeddings": 16, "deepstack_visual_indexes": [1]},
        tie_word_embeddings=True,
    )  # fmt: skip
    expected = set(Qwen3VLForConditionalGeneration(config).state_dict()) - {"lm_head.weight"}
    assert {name for name, _ in random_weights(config, seed=0)} == expected


def test_the_qwen3_vl_base_loads_through_the_real_folder_path_with_its_weights_unchanged(reduced_qwen3_base):
    model = load_base_folder(reduced_qwen3_base)
    index = json.loads((reduced_qwen3_base / INDEX_FILE).read_text())["weight_map"]
    name = "model.visual.deepstack_merger_list.2.linear_fc1.weight"
    with safe_open(reduced_qwen3_base / index[name], "pt") as f:
        stored = f.get_tensor(name)
    assert torch.equal(model.visual.deepstack_merger_list[2].linear_fc1.weight, stored.float())


def test_a_vision_depth_too_short_for_the_deepstack_taps_is_refused_in_one_line(tmp_path, capsys):
    assert main(["qwen3-vl-2b", str(tmp_path / "b"), "--vision-depth", "2"]) == 2
    assert capsys.readouterr().err == (
        "error: qwen3-vl-2b: DeepStack taps [0, 0, 1] must be distinct blocks of the 2-block vision tower; "
        "give --vision-depth of at least 3\n"
    )
    assert not (tmp_path / "b").exists()
