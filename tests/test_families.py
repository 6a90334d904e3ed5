"""A folder's model_type picks its family; a type agff-deploy does not build on is named in one line, before
transformers sees the folder."""

import json

import pytest

from agff_deploy.errors import ArtifactError
from agff_deploy.families import FAMILIES, family_of, folder_family
from agff_deploy.families.qwen2_vl import QWEN2_VL
from agff_deploy.families.qwen3_vl import QWEN3_VL
from export import to_onnx
from train import run

SUPPORTED = "agff-deploy builds on qwen2_vl (Qwen2-VL), qwen3_vl (Qwen3-VL)"
UNSUPPORTED = ["qwen2_5_vl", "qwen3_vl_moe", "qwen3_5"]


def folder_of(tmp_path, model_type: str):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "text_config": {}}))
    return folder


def test_each_family_is_found_by_its_model_type(tmp_path):
    assert FAMILIES == {"qwen2_vl": QWEN2_VL, "qwen3_vl": QWEN3_VL}
    assert folder_family(folder_of(tmp_path, "qwen3_vl")) is QWEN3_VL
    assert family_of({"model_type": "qwen2_vl"}) is QWEN2_VL


@pytest.mark.parametrize("model_type", UNSUPPORTED)
def test_an_unsupported_folder_is_named_with_the_types_supported(tmp_path, model_type):
    folder = folder_of(tmp_path, model_type)
    with pytest.raises(ArtifactError) as caught:
        folder_family(folder)
    assert str(caught.value) == f"{folder}/config.json: model_type '{model_type}' is not supported; {SUPPORTED}"


@pytest.mark.parametrize("model_type", UNSUPPORTED)
def test_training_on_an_unsupported_base_exits_with_one_line(tmp_path, capsys, model_type):
    folder = folder_of(tmp_path, model_type)
    assert run.main(["--base", str(folder), "--out", str(tmp_path / "ckpt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {folder}/config.json: model_type '{model_type}' is not supported; {SUPPORTED}\n"


@pytest.mark.parametrize("model_type", UNSUPPORTED)
def test_exporting_an_unsupported_embedder_exits_with_one_line(tmp_path, capsys, model_type):
    folder = folder_of(tmp_path, model_type)
    assert to_onnx.main([str(folder), "--pooling", "last-token", "-o", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {folder}/config.json: model_type '{model_type}' is not supported; {SUPPORTED}\n"
    assert not (tmp_path / "bundle").exists()


def test_a_checkpoint_whose_base_is_unsupported_is_named(tiny_checkpoint, tmp_path, capsys):
    config = json.loads((tiny_checkpoint / "agff_config.json").read_text())
    config["base"]["model_type"] = "qwen2_5_vl"
    edited = tmp_path / "ckpt"
    edited.mkdir()
    for path in tiny_checkpoint.iterdir():
        (edited / path.name).write_bytes(path.read_bytes())
    (edited / "agff_config.json").write_text(json.dumps(config))
    assert to_onnx.main([str(edited), "-o", str(tmp_path / "bundle")]) == 2
    assert capsys.readouterr().err == (
        f"error: {edited}/agff_config.json (base): model_type 'qwen2_5_vl' is not supported; {SUPPORTED}\n"
    )
