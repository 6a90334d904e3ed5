import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from agff_deploy.checkpoint import item_encoder
from agff_deploy.model import AGFFEmbedder
from agff_deploy.presets import preset_config
from agff_deploy.scenes import make_scene, vocabulary_corpus
from agff_deploy.tokenization import train_bpe_tokenizer


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return train_bpe_tokenizer(vocabulary_corpus(), 512)


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> AGFFEmbedder:
    torch.manual_seed(0)
    return AGFFEmbedder(preset_config("tiny", tokenizer)).eval()


@pytest.fixture(scope="session")
def encoder(tiny_model, tokenizer):
    return item_encoder(tiny_model.config, tokenizer)


def scene_images(count: int, size: int, first: int = 0) -> list[np.ndarray]:
    return [make_scene(first + i).render(size) for i in range(count)]
