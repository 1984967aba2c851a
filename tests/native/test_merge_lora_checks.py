"""`phi3v merge-lora` checks the adapter against the base first: another base, other shapes or a damaged adapter
file is one clear error, and no output folder is left behind."""

import json
import shutil

import pytest
import torch

from phi3v.cli import main
from phi3v.modeling_phi3v import Phi3VForCausalLM

from .release import write_release_folder

TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "img_projection.0", "fc1"]


def write_adapter(base, folder):
    """A trained-looking LoRA adapter (B not zero) of the model in `base`; peft records `base` as its base."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Phi3VForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def other_seed_base(tmp_path_factory):
    """Same architecture and shapes as the release folder, other weights."""
    return write_release_folder(tmp_path_factory.mktemp("other") / "base", seed=1)


def merge(base, adapter, out, *flags):
    return main(["merge-lora", str(base), str(adapter), str(out), *flags])


def test_an_adapter_of_another_base_of_the_same_shapes_is_refused(release_folder, other_seed_base, tmp_path, capsys):
    adapter = write_adapter(other_seed_base, tmp_path / "adapter")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(other_seed_base)
    assert merge(release_folder, adapter, tmp_path / "merged") == 2
    err = capsys.readouterr().err
    assert (f"error: {adapter / 'adapter_config.json'} says the adapter was trained on {str(other_seed_base)!r} "
            f"(base_model_name_or_path), not on {str(release_folder)!r}: merge it into the base it was trained on. ") in err
    assert "pass --other-base" in err
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.tmp-*"))
    # the override merges it (same shapes)
    assert merge(release_folder, adapter, tmp_path / "merged", "--other-base") == 0
    assert (tmp_path / "merged" / "config.json").is_file()


def test_a_copy_or_the_download_of_the_named_base_is_accepted(other_seed_base, tmp_path):
    adapter = write_adapter(other_seed_base, tmp_path / "adapter")
    copy = shutil.copytree(other_seed_base, tmp_path / "copy")  # same weights under another path
    assert merge(copy, adapter, tmp_path / "from-copy") == 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/tiny"}))
    (copy / "provenance.json").write_text(json.dumps({"model": {"id": "org/tiny", "revision": "abc"}}))
    assert merge(copy, adapter, tmp_path / "from-download") == 0


def test_an_adapter_of_other_shapes_is_refused_naming_the_tensor(release_folder, tmp_path, capsys):
    wider = write_release_folder(tmp_path / "wider", intermediate_size=96)
    adapter = write_adapter(wider, tmp_path / "adapter")
    assert merge(release_folder, adapter, tmp_path / "merged") == 2  # first: it names another base
    assert "base_model_name_or_path" in capsys.readouterr().err
    assert merge(release_folder, adapter, tmp_path / "merged", "--other-base") == 2  # then: the shapes
    err = capsys.readouterr().err
    assert f"error: {adapter / 'adapter_model.safetensors'} does not fit the base model {release_folder}: " in err
    assert ("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight has shape [4, 96] but "
            "model.layers.0.mlp.down_proj is Linear(64, 128)") in err
    assert "Traceback" not in err and err.count("error: ") == 1
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.tmp-*"))


def test_a_damaged_adapter_file_is_named(release_folder, tmp_path, capsys):
    adapter = write_adapter(release_folder, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert merge(release_folder, adapter, tmp_path / "merged") == 2
    assert (f"error: {weights} is not a complete safetensors file" in capsys.readouterr().err)
    assert not (tmp_path / "merged").exists()
