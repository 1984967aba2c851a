"""Phi3VConfig reads and writes the published config.json and refuses anything else."""

import json
import shutil
from pathlib import Path

import pytest

from phi3v.configuration_phi3v import RELEASE_CONFIG_FILE, Phi3VConfig
from phi3v.errors import UserError

FIXTURE = RELEASE_CONFIG_FILE
# keys of the hub file that name remote code, a hub path or a run-time kernel choice: not part of the model
NOT_ROUND_TRIPPED = {"_name_or_path", "auto_map", "_attn_implementation", "transformers_version"}


@pytest.fixture
def release_folder(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "config.json")
    return tmp_path


def test_reads_release_config(release_folder):
    config = Phi3VConfig.from_pretrained(release_folder)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert len(config.rope_parameters["short_factor"]) == len(config.rope_parameters["long_factor"]) == 48
    assert config.rope_parameters["original_max_position_embeddings"] == 4096
    assert config.max_position_embeddings == 131072
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1024, 24)
    assert (config.vision_config.image_size, config.vision_config.hidden_act) == (336, "quick_gelu")
    assert config.image_token_id == 32044
    assert (config.crop_size, config.tokens_per_crop_side, config.vision_layers_used) == (336, 12, 23)


def test_writes_release_config_back(release_folder, tmp_path):
    release = json.loads(FIXTURE.read_text())
    Phi3VConfig.from_pretrained(release_folder).save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    expected = {k: v for k, v in release.items() if k not in NOT_ROUND_TRIPPED}
    assert {k: v for k, v in written.items() if k != "transformers_version"} == expected
    assert written["rope_scaling"]["type"] == "su"


def test_default_config_is_the_release():
    release = json.loads(FIXTURE.read_text())
    defaults = Phi3VConfig().to_dict()
    skip = NOT_ROUND_TRIPPED | {"architectures", "torch_dtype"}
    assert {k: v for k, v in defaults.items() if k not in skip} == {k: v for k, v in release.items() if k not in skip}


def test_language_model_config_is_transformers_phi3(release_folder):
    lm = Phi3VConfig.from_pretrained(release_folder).to_phi3_config()
    assert type(lm).__name__ == "Phi3Config"
    assert lm.rope_parameters["rope_type"] == "longrope"
    assert lm.rope_parameters["long_factor"][0] == pytest.approx(1.0800000429153442)
    assert lm.original_max_position_embeddings == 4096 and lm.num_key_value_heads == 32


def test_tiny_round_trip(tmp_path):
    tiny = Phi3VConfig.tiny(500, image_token_id=499)
    tiny.save_pretrained(tmp_path)
    again = Phi3VConfig.from_pretrained(tmp_path)
    assert again.to_dict() == tiny.to_dict()
    assert (again.vision_config.hidden_size, again.crop_size, again.tokens_per_crop_side) == (32, 56, 2)
    assert again.rope_parameters["rope_type"] == "longrope"


def test_image_token_count_formula():
    release = Phi3VConfig()
    # REFERENCE: square image 2509 tokens at 16 crops (4x4), 757 at 4 (2x2), 313 at 1 (1x1)
    assert [release.image_token_count(n, n) for n in (4, 2, 1)] == [2509, 757, 313]
    tiny = Phi3VConfig.tiny(300)
    assert tiny.image_token_count(1, 1) == 2 * 4 + 1 + 2 * 2


@pytest.mark.parametrize("change, culprit", [
    ({"model_type": "phi3"}, "model_type"),
    ({"embd_layer": None}, "embd_layer"),
    ({"img_processor": None}, "img_processor"),
])
def test_refuses_other_configs(tmp_path, change, culprit):
    config = json.loads(FIXTURE.read_text())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=culprit) as error:
        Phi3VConfig.from_pretrained(tmp_path)
    assert "config.json" in str(error.value)


def test_refuses_unsupported_layout(tmp_path):
    config = json.loads(FIXTURE.read_text())
    config["embd_layer"]["hd_transform_order"] = "glb_sub"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="hd_transform_order"):
        Phi3VConfig.from_pretrained(tmp_path)


def test_refuses_missing_folder(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        Phi3VConfig.from_pretrained(tmp_path / "nowhere")


def test_release_rope_is_longrope_with_su_scaling():
    import math

    import torch
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    config = Phi3VConfig()
    rotary = Phi3RotaryEmbedding(config)
    assert rotary.attention_scaling == pytest.approx(math.sqrt(1 + math.log(131072 / 4096) / math.log(4096)))
    exponents = torch.arange(0, 96, 2).float() / 96
    short = 1.0 / (torch.tensor(config.rope_parameters["short_factor"]) * 10000.0 ** exponents)
    long = 1.0 / (torch.tensor(config.rope_parameters["long_factor"]) * 10000.0 ** exponents)
    x = torch.zeros(1, 1, 96)
    rotary(x, torch.arange(4096)[None])
    torch.testing.assert_close(rotary.inv_freq, short)  # up to 4096 positions: short factors
    rotary(x, torch.arange(4097)[None])
    torch.testing.assert_close(rotary.inv_freq, long)  # beyond: long factors
