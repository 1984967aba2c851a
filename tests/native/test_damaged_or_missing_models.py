"""Model files other machines hand us: damaged safetensors and hub models not in the cache are one clear error."""

import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from hub_fixture import use_hub_cache
from phi3v.cli import main
from phi3v.errors import UserError
from phi3v.model_files import DamagedFile, safetensors_header
from phi3v.modeling_phi3v import Phi3VForCausalLM
from phi3v.training.fingerprint import model_digests


def cut_short(data: bytes) -> bytes:
    return data[:-100]


def random_bytes(data: bytes) -> bytes:
    return torch.randint(0, 256, (len(data),), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()


def huge_header_length(data: bytes) -> bytes:
    return struct.pack("<Q", 2**62) + data[8:]  # the length that made the fingerprint raise MemoryError


def header_not_json(data: bytes) -> bytes:
    return data[:8] + b"\xff" * (len(data) - 8)


def extra_bytes(data: bytes) -> bytes:
    return data + b"\0" * 64


def only_four_bytes(data: bytes) -> bytes:
    return data[:4]


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.bfloat16)}, str(path), metadata={"format": "pt"})
    return path


def test_a_sound_file_gives_its_header(weights_file):
    header_size, header = safetensors_header(weights_file)
    assert header == {"__metadata__": {"format": "pt"},
                      "a": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 60]},
                      "b": {"dtype": "BF16", "shape": [7], "data_offsets": [60, 74]}}
    assert weights_file.stat().st_size == 8 + header_size + 74


@pytest.mark.parametrize("damage", [cut_short, random_bytes, huge_header_length, header_not_json, extra_bytes,
                                    only_four_bytes])
def test_a_damaged_file_is_one_error_naming_it(weights_file, damage):
    weights_file.write_bytes(damage(weights_file.read_bytes()))
    with pytest.raises(DamagedFile, match=rf"^{weights_file} is not a complete safetensors file \(.+\): it is "
                                           "damaged or was cut short — replace it"):
        safetensors_header(weights_file)


@pytest.mark.parametrize("damage", [cut_short, random_bytes, huge_header_length])
def test_loading_or_fingerprinting_a_damaged_base_names_the_shard(release_folder, tmp_path, damage):
    folder = shutil.copytree(release_folder, tmp_path / "base")
    shard = folder / "model-00003-of-00015.safetensors"
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(UserError, match=f"^{shard} is not a complete safetensors file"):
        Phi3VForCausalLM.from_pretrained(folder)
    with pytest.raises(UserError, match=f"^{shard} is not a complete safetensors file"):
        model_digests(folder)  # what a training run's fingerprint reads first


def test_generate_with_a_damaged_model_exits_2_without_traceback(release_folder, tmp_path, capsys):
    folder = shutil.copytree(release_folder, tmp_path / "model")
    shard = folder / "model-00001-of-00015.safetensors"
    shard.write_bytes(cut_short(shard.read_bytes()))
    assert main(["generate", str(folder), "--prompt", "x"]) == 2
    assert f"error: {shard} is not a complete safetensors file" in capsys.readouterr().err


def test_generate_with_an_uncached_hub_id_offline_says_so(tmp_path, monkeypatch, capsys):
    use_hub_cache(monkeypatch, tmp_path / "hf")  # HF_HOME empty, HF_HUB_OFFLINE=1
    assert main(["generate", "someorg/not-cached", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert (f"error: model someorg/not-cached is not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'}, "
            f"HF_HOME={tmp_path / 'hf'}) and HF_HUB_OFFLINE is set") in err
    assert "`hf download someorg/not-cached` fills this cache" in err
    assert "preprocessor_config.json" not in err
    assert main(["generate", "someorg/not-cached", "--revision", "v2", "--prompt", "x"]) == 2
    assert "at revision 'v2' is not in the Hugging Face cache" in capsys.readouterr().err
