"""Tiny Phi-3.5-vision models and inputs built locally (no hub access)."""

import pytest
import torch

from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.modeling_phi3v import Phi3VForCausalLM
from phi3v.testing import write_official_checkpoint

VOCAB_SIZE = 300
IMAGE_TOKEN_ID = 299


@pytest.fixture(scope="session")
def tiny_config():
    return Phi3VConfig.tiny(VOCAB_SIZE, image_token_id=IMAGE_TOKEN_ID)


@pytest.fixture(scope="session")
def official_folder(tmp_path_factory, tiny_config):
    """A tiny checkpoint in the release's layout, sharded like the hub's."""
    folder = tmp_path_factory.mktemp("official")
    write_official_checkpoint(folder, tiny_config, seed=0, shard_size=60_000)
    return folder


@pytest.fixture(scope="session")
def tiny_model(official_folder):
    return Phi3VForCausalLM.from_pretrained(official_folder, dtype=torch.float32)
