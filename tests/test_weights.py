"""Sharded safetensors: written and read one shard at a time, every missing or broken file named."""

import json

import pytest
import torch

from agff_deploy.checkpoint import WEIGHT_FILE_PATTERNS, load_checkpoint, save_checkpoint, write_atomically
from agff_deploy.weights import INDEX_FILE, SINGLE_FILE, iter_weights, weight_files, weights_sha256, write_weights


def tensors(count: int = 5, size: int = 1000) -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": torch.full((size,), float(i)) for i in range(count)}


def test_weights_past_the_shard_size_are_split_with_an_index(tmp_path):
    paths = write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    assert [p.name for p in paths] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 5 * 4000
    assert index["weight_map"]["layer4.weight"] == "model-00003-of-00003.safetensors"


def test_weights_under_the_shard_size_stay_one_file(tmp_path):
    assert write_weights(tmp_path, tensors().items()) == [tmp_path / SINGLE_FILE]
    assert not (tmp_path / INDEX_FILE).exists()


def test_shards_read_back_one_at_a_time_with_every_tensor_unchanged(tmp_path):
    write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    shards = list(iter_weights(tmp_path, dtype=torch.float16))
    assert [len(s) for s in shards] == [2, 2, 1]
    merged = {k: v for s in shards for k, v in s.items()}
    assert all(merged[k].dtype == torch.float16 and torch.equal(merged[k].float(), v) for k, v in tensors().items())


def test_a_missing_shard_is_named_with_the_index_that_lists_it(tmp_path):
    write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors is missing: .*index.json lists it"):
        weight_files(tmp_path)


def test_a_truncated_shard_is_named_before_anything_loads(tmp_path):
    write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    shard = tmp_path / "model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model-00001-of-00003.safetensors is not a readable safetensors file"):
        weight_files(tmp_path)


def test_the_digest_of_shards_changes_when_any_shard_changes(tmp_path):
    write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    before = weights_sha256(tmp_path)
    changed = dict(tensors(), **{"layer3.weight": torch.zeros(1000)})
    write_weights(tmp_path, changed.items(), shard_bytes=8000)
    assert weights_sha256(tmp_path) != before


def test_a_single_file_save_removes_the_shards_of_an_older_save(tmp_path):
    write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    write_atomically(tmp_path, lambda tmp: write_weights(tmp, tensors(2).items()), replaces=WEIGHT_FILE_PATTERNS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE]


def test_a_checkpoint_saved_over_a_sharded_one_loads_as_itself(tmp_path, tiny_model, tokenizer):
    write_weights(tmp_path, tensors().items(), shard_bytes=8000)
    save_checkpoint(tiny_model, tokenizer, tmp_path)
    model, _ = load_checkpoint(tmp_path)
    assert not (tmp_path / INDEX_FILE).exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in tiny_model.state_dict().items())


def test_a_sharded_checkpoint_loads_at_the_dtype_asked_for(tmp_path, tiny_model, tokenizer):
    save_checkpoint(tiny_model, tokenizer, tmp_path)
    (tmp_path / SINGLE_FILE).unlink()
    write_weights(tmp_path, tiny_model.state_dict().items(), shard_bytes=20_000)
    model, _ = load_checkpoint(tmp_path, dtype=torch.float16)
    assert len(weight_files(tmp_path)) > 1
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value.half()), name
