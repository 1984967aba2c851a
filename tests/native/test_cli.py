"""The `phi3v` console script: generate, validate, merge-lora on the tiny model; bad arguments in one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v.cli import main
from phi3v.modeling_phi3v import Phi3VForCausalLM
from phi3v.processing_phi3v import Phi3VProcessor

ROOT = Path(__file__).parents[2]


def write_image(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def greedy_reference(folder, prompt, images, max_new_tokens):
    processor = Phi3VProcessor.from_pretrained(folder)
    model = Phi3VForCausalLM.from_pretrained(folder, dtype=torch.float32)
    inputs = processor(processor.generation_prompt(prompt), images)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=processor.stop_token_ids, pad_token_id=processor.pad_token_id)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generate_answers_as_the_model_does(release_folder, tmp_path, capsys):
    first, second = write_image(tmp_path / "a.png", 1), write_image(tmp_path / "b.png", 2)
    code = main(["generate", str(release_folder), "--image", str(first), "--image", str(second),
                 "--prompt", "Same page?", "--max-new-tokens", "5", "--precision", "fp32", "--attention", "eager"])
    assert code == 0
    expected = greedy_reference(release_folder, "<|image_1|>\n<|image_2|>\nSame page?",
                                [Image.open(first), Image.open(second)], 5)
    assert capsys.readouterr().out == expected + "\n"


def test_validate_reports_ok_and_problems(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "p.png")
    record = {"id": "a", "source": "mine", "conversations": [
        {"images": ["p.png"], "user": "<|image_1|>\nWhat?", "assistant": "42"}]}
    (tmp_path / "mine_train.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "mine_val.jsonl").write_text(json.dumps({**record, "id": "b"}) + "\n")
    code = main(["validate", str(tmp_path), "mine"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "OK (train: 1, val: 1)" in out.out
    (tmp_path / "mine_val.jsonl").write_text("{not json\n")
    assert main(["validate", str(tmp_path), "mine"]) == 2
    assert "mine_val.jsonl:1" in capsys.readouterr().err


def test_merge_lora_writes_the_release_layout(release_folder, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = Phi3VForCausalLM.from_pretrained(release_folder)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj"]))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # a trained adapter: B is not zero
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "merged"
    assert main(["merge-lora", str(release_folder), str(tmp_path / "adapter"), str(out), "--num-crops", "16"]) == 0
    merged = Phi3VForCausalLM.from_pretrained(out)
    processor = Phi3VProcessor.from_pretrained(out)
    assert processor.image_processor.num_crops == 16
    inputs = processor("<|image_1|>\nWhat?", [Image.new("RGB", (40, 30))])
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, peft_model.merge_and_unload()(**inputs).logits,
                                   rtol=1e-4, atol=1e-5)
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["generate", "m", "--prompt", "x", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["generate", "m", "--prompt", "x", "--max-new-tokens", "0"], "0 is not positive"),
    (["generate", "m"], "the following arguments are required: --prompt"),
    (["merge-lora", "m"], "the following arguments are required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_inputs_give_one_clear_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["merge-lora", str(tmp_path), str(tmp_path / "no-adapter"), str(tmp_path / "out")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


def test_help_explains_each_command(capsys):
    result = subprocess.run([sys.executable, "-m", "phi3v.cli", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert result.returncode == 0
    for command in ("generate", "validate", "merge-lora"):
        assert command in result.stdout
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and "usage: phi3v " + command in capsys.readouterr().out
