"""`python -m phi3v.recipe`: the seed guide's command lines resolve to the paper preset's runs and train.

Every training command of the guide (recipe_facts §1.6) is listed verbatim below, apart from the script
name. Each resolves to a RunConfig that is compared field by field with the paper preset's run for the
same table row, and each trains on the tiny model from the local hub cache, with test-size flags
appended (one step, batch 2, one crop, no DeepSpeed, SDPA in place of flash attention on a CPU).
"""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from phi3v.errors import UserError
from phi3v.recipe import build_parser, flags_to_run, main, parse_args, workflow_config, workflow_yaml
from phi3v.workflow.settings import resolve_config, run_config

OUT = "/tmp/recipe-out"  # stands for the guide's <output_dir>; runs below write under tmp_path
UCF_DIR = "/path/to/converted_ucf101"  # replaced by a converted folder where the command runs
NLVR2_TEMPLATE = "nlvr2 --bf16 --use_flash_attention --batch_size 64 --output_dir {out} --learning_rate {lr} --num_train_epochs {epochs}"
DOCVQA_TEMPLATE = "docvqa --full_train --bf16 --use_flash_attention --batch_size 64 --output_dir {out} --learning_rate {lr} --num_train_epochs {epochs}"
HATEFUL_TEMPLATE = "hateful_memes --bf16 --use_flash_attention --batch_size 64 --output_dir {out} --learning_rate {lr} --num_train_epochs {epochs}"

# (seed command number, processes, command after the script name, the paper preset's run or None)
SEED_COMMANDS = [
    (1, 4, "docvqa", None),
    (2, 8, "nlvr2", None),
    (4, 4, f"ucf101 --data_dir {UCF_DIR}", ("ucf101", "full-fp16-eager")),
    (5, 8, f"hateful_memes --output_dir {OUT} --batch_size 64 --use_flash_attention --bf16",
     ("hateful_memes", "full-bf16-flash_attention_2")),
    (6, 8, f"hateful_memes --output_dir {OUT} --batch_size 64", ("hateful_memes", "full-fp16-eager")),
    (7, 2, f"hateful_memes --output_dir {OUT} --batch_size 64 --use_lora", ("hateful_memes", "lora-fp16-eager")),
    (8, 2, f"hateful_memes --output_dir {OUT} --batch_size 64 --use_lora --use_qlora",
     ("hateful_memes", "qlora-fp16-eager")),
    (9, 4, NLVR2_TEMPLATE.format(out=OUT, lr="1e-5", epochs=3), ("nlvr2", "full-bf16-flash_attention_2")),
    (10, 4, DOCVQA_TEMPLATE.format(out=OUT, lr="5e-6", epochs=2), ("docvqa", "full-bf16-flash_attention_2")),
    (11, 4, HATEFUL_TEMPLATE.format(out=OUT, lr="5e-5", epochs=2), ("hateful_memes", "full-bf16-flash_attention_2")),
]
# What any command decides, given or by the script's defaults; the rest are the preset's choices.
DECIDED = ("dataset", "strategy", "precision", "attention", "batch_size", "per_device_batch_size", "num_crops",
           "deepspeed", "train_turns", "freeze_token_embeddings", "lora_on_vision", "warmup_steps",
           "weight_decay", "max_grad_norm", "gradient_checkpointing", "loss_reduction", "adapter_dtype",
           "attention_mask")
GIVEN = {"--learning_rate": ("learning_rate",), "--num_train_epochs": ("epochs",),
         "--lora_rank": ("lora_rank", "lora_alpha"), "--lora_alpha_ratio": ("lora_alpha",)}


def resolve(words: list[str], processes: int = 1):
    task, args = parse_args(words)
    return task, args, flags_to_run(task, args, processes)


@pytest.fixture(scope="module")
def paper():
    return resolve_config({"preset": "paper"})


def compared_fields(words: list[str]) -> tuple[str, ...]:
    return DECIDED + tuple(field for flag, fields in GIVEN.items() if flag in words for field in fields)


def assert_same_fields(run, preset_run, fields):
    differ = {key: (getattr(run, key), getattr(preset_run, key)) for key in fields
              if getattr(run, key) != getattr(preset_run, key)}
    assert not differ, differ


@pytest.mark.parametrize("number,processes,command,row", SEED_COMMANDS, ids=[f"seed{c[0]}" for c in SEED_COMMANDS])
def test_seed_command_resolves_to_the_paper_run(number, processes, command, row, paper):
    words = shlex.split(command)
    task, args, run = resolve(words, processes)
    if row is None:  # the quick starts: the script's defaults, a run no table has
        assert (run.strategy, run.precision, run.attention, run.learning_rate, run.epochs, run.batch_size) == (
            "full", "fp16", "eager", 4e-5, 1, 16)
        assert run.run not in [r["run"] for r in paper["runs"] if r["dataset"] == run.dataset]
        return
    preset_run = run_config(paper, *row)
    assert_same_fields(run, preset_run, compared_fields(words))
    if "--learning_rate" not in words and (preset_run.learning_rate, preset_run.epochs) != (4e-5, 1):
        # the guide's hardware examples set no learning rate or epochs: the script's defaults, not the table's
        assert (run.learning_rate, run.epochs) == (4e-5, 1)
    if run.strategy.is_lora and "--lora_rank" not in words:
        assert (run.lora_rank, run.lora_alpha) == (64, 128)  # the script's defaults (the table: r128 a256)


def table_row_command(row: dict) -> str:
    """The guide's suggested-hyperparameter command for a table row, with the row's options (§1.6 mapping)."""
    template = {"nlvr2": NLVR2_TEMPLATE, "docvqa": DOCVQA_TEMPLATE, "hateful_memes": HATEFUL_TEMPLATE}[row["dataset"]]
    command = template.format(out=OUT, lr=row["learning_rate"], epochs=int(row["epochs"]))
    if row["precision"] == "fp16":
        command = command.replace(" --bf16 --use_flash_attention", "")
    if row["strategy"] == "frozen_vision":
        command += " --freeze_vision_model"
    if row["strategy"] in ("lora", "qlora"):
        command += f" --use_lora --lora_rank {row['lora_rank']} --lora_alpha_ratio {row['lora_alpha'] / row['lora_rank']}"
    if row["strategy"] == "qlora":
        command += " --use_qlora"
    return command


def test_every_table_row_has_its_command(paper):
    rows = [row for row in paper["runs"] if row["dataset"] in ("nlvr2", "docvqa", "hateful_memes")]
    assert len(rows) == 18
    for row in rows:
        words = shlex.split(table_row_command(row))
        _, _, run = resolve(words, 4)
        assert_same_fields(run, run_config(paper, row["dataset"], row["run"]), compared_fields(words))


def test_the_preset_differs_only_where_it_says_why(paper):
    _, _, run = resolve(shlex.split(HATEFUL_TEMPLATE.format(out=OUT, lr="5e-5", epochs=2)), 4)
    preset_run = run_config(paper, "hateful_memes", "full-bf16-flash_attention_2")
    # the scripts save no intermediate checkpoints; the preset checkpoints every 200 steps so that a
    # run resumes (the same numbers); the seed is the HF Trainer's 42 in both
    assert (run.seed, run.checkpoint_every) == (42, None)
    assert (preset_run.seed, preset_run.checkpoint_every) == (42, 200)
    same = {key for key in run.to_dict() if getattr(run, key) == getattr(preset_run, key)}
    assert set(run.to_dict()) - same == {"checkpoint_every"}


def test_the_workflow_snippet_resolves_to_the_same_run():
    for _, processes, command, _ in SEED_COMMANDS:
        task, args, run = resolve(shlex.split(command), processes)
        config = yaml.safe_load(workflow_yaml(workflow_config(task, args, run, processes)))
        assert run_config(resolve_config(config), run.dataset, run.run) == run, command


@pytest.mark.parametrize("command,message", [
    ("hateful_memes --use_flash_attention", "without --bf16: finetune_hf_trainer_hateful_memes.py would train in fp16"),
    ("docvqa --use_lora --lora_alpha 16", "--lora_alpha is not a flag of the recipe's scripts"),
    ("docvqa --num_crops 17", "--num_crops 17: the recipe allows 1 to 16"),
    ("nlvr2 --batch_size 64 --batch_size_per_gpu 3", "--batch_size 64 must be a multiple of the per-GPU batch 3"),
])
def test_what_the_scripts_refuse_is_one_clear_error(command, message):
    with pytest.raises(UserError, match=message.replace("(", "\\(")):
        resolve(shlex.split(command))


def test_the_scripts_rules():
    _, _, run = resolve(["nlvr2", "--use_flash_attention"])  # nlvr2 and ucf101 force bf16 with flash attention
    assert (run.precision, run.attention) == ("bf16", "flash_attention_2")
    _, _, run = resolve(["hateful_memes", "--use_qlora", "--lora_rank", "32", "--lora_alpha_ratio", "0.5",
                         "--freeze_vision_model"])
    assert (run.strategy, run.lora_rank, run.lora_alpha, run.lora_on_vision, run.deepspeed) == ("qlora", 32, 16, False, False)
    _, _, run = resolve(["docvqa", "--freeze_vision_model", "--bf16"])
    assert (run.strategy, run.precision, run.attention, run.train_turns) == ("frozen_vision", "bf16", "eager", "one_random")
    assert build_parser("ucf101").parse_args(["--data_dir", "d"]).num_crops == 4
    help_text = build_parser("docvqa").format_help()
    assert "this project's additions (not in the recipe's scripts)" in help_text and "--max_steps" in help_text


# ---- the commands run ------------------------------------------------------------------------------

def size_flags(words: list[str], cache) -> list[str]:
    extra = ["--max_steps", "1", "--batch_size", "2", "--num_crops", "1", "--no_deepspeed", "--no-tqdm",
             "--cache_dir", str(cache)]
    if words[0] in ("hateful_memes", "nlvr2"):
        extra += ["--eval_size", "3"]  # the hub cache's Cauldron holds 8 rows
    if "--use_flash_attention" in words:
        extra += ["--attention", "sdpa"]  # flash-attn needs a GPU
    if words[0] == "ucf101":
        extra += ["--bf16"]  # 8 frames a video: fp16 autocast on a CPU is several times slower than bf16
    return extra


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("recipe-cache")


@pytest.fixture
def ucf_dir(offline_hub, cache):
    from phi3v.data.sources.ucf101 import convert_ucf101, download_ucf101

    folder = cache / "ucf101-converted"
    if not folder.exists():
        download_ucf101(cache / "ucf101-raw")
        convert_ucf101(cache / "ucf101-raw", folder)
    return folder


@pytest.mark.parametrize("number,processes,command,row", SEED_COMMANDS, ids=[f"seed{c[0]}" for c in SEED_COMMANDS])
def test_seed_command_trains_on_the_tiny_model(number, processes, command, row, offline_hub, cache, ucf_dir,
                                               tmp_path, capsys):
    words = shlex.split(command.replace(OUT, str(tmp_path / "out")).replace(UCF_DIR, str(ucf_dir)))
    if "--output_dir" not in words:
        words += ["--output_dir", str(tmp_path / "out")]
    words += size_flags(words, cache) + ["--skip_eval"]
    assert main(words) == 0
    out = tmp_path / "out"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1]
    provenance = json.loads((out / "provenance.json").read_text())
    _, _, expected = resolve(words)
    assert provenance["run"] == expected.to_dict()
    assert (out / "model" / "config.json").is_file()
    assert "runs:\n- dataset: " + expected.dataset in capsys.readouterr().out


def test_a_run_evaluates_before_and_after(offline_hub, cache, tmp_path, capsys):
    words = ["hateful_memes", "--output_dir", str(tmp_path / "out"), "--use_lora", "--max_eval_samples", "1",
             "--report_to", "tensorboard"]
    assert main(words + size_flags(words, cache)) == 0
    out = tmp_path / "out"
    before = json.loads((out / "eval_before" / "scores.json").read_text())
    after = json.loads((out / "eval_after" / "scores.json").read_text())
    assert (before["run"], after["run"], before["n"], after["n"]) == ("base", "lora-fp16-eager", 1, 1)
    printed, errors = capsys.readouterr()
    assert "%|" not in errors  # --no-tqdm: neither the training nor the evaluation bar
    assert f"Accuracy before finetuning: {before['score'] / 100:.4f}" in printed
    assert f"Accuracy after finetuning: {after['score'] / 100:.4f}" in printed
    assert list((out / "trackers").rglob("events.out.tfevents.*"))
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_qlora_evaluates_the_4bit_base_before_training_one_example_at_a_time(offline_hub, cache, tmp_path,
                                                                              monkeypatch):
    """The QLoRA scripts evaluate the model as loaded, 4-bit; every script generates one example at a
    time and stops at the tokenizer's eos (NLVR2 too, whatever --batch_size_per_gpu)."""
    pytest.importorskip("bitsandbytes")
    import phi3v.evaluation.evaluate as evaluation

    class Stop(Exception):
        pass

    asked = []

    def first_evaluation(**kwargs):
        asked.append(kwargs)
        raise Stop

    monkeypatch.setattr(evaluation, "evaluate", first_evaluation)
    words = ["nlvr2", "--output_dir", str(tmp_path / "out"), "--use_qlora", "--bf16", "--batch_size_per_gpu", "2"]
    with pytest.raises(Stop):
        main(words + size_flags(words, cache))
    [before] = asked
    assert before["run_name"] == "base" and before["quantization_config"].load_in_4bit
    assert (before["batch_size"], before["stop_tokens"]) == (1, "eos")
