"""transformers' own API on the release's file set: Auto classes, save/load round trips, overrides, chat template."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

import phi3v  # noqa: F401  (registers phi3_v with the Auto classes)
from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.errors import UserError
from phi3v.modeling_phi3v import Phi3VForCausalLM
from phi3v.image_processing_phi3v import CLIP_MEAN, Phi3VImageProcessor
from phi3v.processing_phi3v import Phi3VProcessor, check_compatible


def image(width=60, height=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_auto_classes_load_the_release_folder_with_the_code_here(release_folder):
    assert type(AutoConfig.from_pretrained(release_folder, trust_remote_code=False)) is Phi3VConfig
    assert type(AutoImageProcessor.from_pretrained(release_folder, trust_remote_code=False)) is Phi3VImageProcessor
    processor = AutoProcessor.from_pretrained(release_folder, trust_remote_code=False)
    assert type(processor) is Phi3VProcessor and processor.image_processor.num_crops == 4
    model = AutoModelForCausalLM.from_pretrained(release_folder, trust_remote_code=False)
    assert type(model) is Phi3VForCausalLM
    assert type(AutoModelForImageTextToText.from_pretrained(release_folder, trust_remote_code=False)) is Phi3VForCausalLM
    direct = Phi3VForCausalLM.from_pretrained(release_folder)
    inputs = processor("<|image_1|>\nWhat is the total?", [image()])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, direct(**inputs).logits, rtol=0, atol=0)
    check_compatible(model, processor, str(release_folder))


@pytest.mark.parametrize("settings", [
    {"num_crops": 16}, {"num_crops": 1}, {"crop_size": 112}, {"do_convert_rgb": False},
    {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4]},
])
def test_every_processor_setting_round_trips(release_folder, tmp_path, settings):
    base = Phi3VProcessor.from_pretrained(release_folder)
    saved = {k: v for k, v in base.image_processor.to_dict().items() if k != "num_img_tokens"}  # follows crop_size
    image_processor = Phi3VImageProcessor(**{**saved, **settings})
    processor = Phi3VProcessor(image_processor, base.tokenizer)
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "processor_config.json").exists()  # the release's file names only
    written = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert written["image_processor_type"] == "Phi3VImageProcessor" and written["num_img_tokens"] == image_processor.num_img_tokens
    assert {key: written[key] for key in settings} == settings
    for loaded in (Phi3VProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert loaded.image_processor.to_dict() == image_processor.to_dict()
        before, after = processor("<|image_1|>\nWhat?", [image()]), loaded("<|image_1|>\nWhat?", [image()])
        assert after["input_ids"].tolist() == before["input_ids"].tolist()
        torch.testing.assert_close(after["pixel_values"], before["pixel_values"], rtol=0, atol=0)


def test_settings_given_at_load_override_the_file(release_folder):
    assert Phi3VProcessor.from_pretrained(release_folder, num_crops=16).image_processor.num_crops == 16
    assert AutoImageProcessor.from_pretrained(release_folder, num_crops=2).num_crops == 2
    assert Phi3VProcessor.from_pretrained(release_folder, image_token_id=7).image_token_id == 7
    with pytest.raises(UserError, match="num_crops = 40"):
        Phi3VProcessor.from_pretrained(release_folder, num_crops=40)


def test_config_fields_given_at_load_apply_before_the_checks(release_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(release_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_id"] = 5000  # outside the tiny vocabulary: the file alone is refused
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="image_token_id = 5000"):
        Phi3VConfig.from_pretrained(folder)
    good = Phi3VProcessor.from_pretrained(release_folder).image_token_id
    assert Phi3VConfig.from_pretrained(folder, image_token_id=good).image_token_id == good
    model = Phi3VForCausalLM.from_pretrained(folder, image_token_id=good)
    assert model.config.image_token_id == good
    assert AutoConfig.from_pretrained(folder, image_token_id=good, num_hidden_layers=2).image_token_id == good


def test_image_token_mismatch_is_refused_where_model_and_processor_load(release_folder, tmp_path):
    from phi3v.evaluation.inference import load_model

    folder = tmp_path / "model"
    shutil.copytree(release_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_id"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"image token id is \d+ .* image_token_id 3"):
        load_model(folder, "bf16", "sdpa", torch.device("cpu"))
    processor = Phi3VProcessor.from_pretrained(release_folder, crop_size=112)
    with pytest.raises(UserError, match="crop_size 112"):
        check_compatible(Phi3VConfig.from_pretrained(release_folder), processor, "here")


def test_chat_template_gives_the_recipe_prompt_ids(release_folder):
    processor = Phi3VProcessor.from_pretrained(release_folder)
    first, second = image(seed=1), image(90, 30, seed=2)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": first}, {"type": "image", "image": second},
        {"type": "text", "text": "Are these the same page?"},
    ]}]
    recipe_prompt = processor.generation_prompt("<|image_1|>\n<|image_2|>\nAre these the same page?")
    assert recipe_prompt == "<|user|>\n<|image_1|>\n<|image_2|>\nAre these the same page?<|end|>\n<|assistant|>\n"
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == recipe_prompt
    expected = processor(recipe_prompt, [first, second])
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids.tolist() == expected["input_ids"].tolist()
    batch = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    # plain string content renders as the release's own template does
    text_only = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert processor.apply_chat_template(text_only) == processor.tokenizer.apply_chat_template(text_only, tokenize=False)


def test_image_processor_keeps_transformers_file_format(tmp_path):
    Phi3VImageProcessor(num_crops=16, crop_size=56).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert written == {"crop_size": 56, "do_convert_rgb": True, "image_mean": list(CLIP_MEAN),
                       "image_processor_type": "Phi3VImageProcessor", "image_std": written["image_std"],
                       "num_crops": 16, "num_img_tokens": 4, "processor_class": "Phi3VProcessor"}
    assert Phi3VImageProcessor.from_pretrained(tmp_path).num_crops == 16


def test_a_process_that_loads_no_model_may_skip_the_registration():
    # Snakemake reading the workflow sets PHI3V_AUTO_CLASSES=0: neither torch nor transformers is imported.
    import subprocess
    import sys

    probe = "import sys, phi3v.workflow.settings; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    skipped = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PHI3V_AUTO_CLASSES": "0"},
                             capture_output=True, text=True, check=True)
    assert skipped.stdout.strip() == "[]"
    registered = subprocess.run([sys.executable, "-c", probe + "; from transformers import CONFIG_MAPPING; "
                                 "print(CONFIG_MAPPING['phi3_v'].__module__)"],
                                env={k: v for k, v in os.environ.items() if k != "PHI3V_AUTO_CLASSES"},
                                capture_output=True, text=True, check=True)
    assert registered.stdout.split() == ["['torch',", "'transformers']", "phi3v.configuration_phi3v"]
