"""Config resolution: presets, overrides, schema defaults and errors, cross-field checks."""

import copy
import re

import pytest

from phi3v.workflow import config_schema, settings
from phi3v.errors import UserError
from phi3v.training.run_config import RunConfig


def resolve(**overrides):
    return settings.resolve_config({"preset": "demo", **overrides})


def test_overrides_merge_mappings_key_by_key_and_replace_lists():
    nlvr2 = [run for run in settings.load_preset("demo")["runs"] if run["dataset"] == "nlvr2"]
    overrides = {"preset": "demo", "evaluation": {"batch_size": 2}, "datasets": {"nlvr2": {"sizes": {"test": 8}}},
                 "runs": nlvr2, "runs_filter": ["nlvr2/*"]}
    given = copy.deepcopy(overrides)
    config = settings.resolve_config(overrides)
    assert (config["evaluation"]["batch_size"], config["evaluation"]["max_new_tokens"]) == (2, 16)
    assert config["datasets"]["nlvr2"]["sizes"] == {"train": 256, "test": 8}
    assert {run["dataset"] for run in config["runs"]} == {"nlvr2"} and config["runs_filter"] == ["nlvr2/*"]
    assert overrides == given  # the overrides are read, not changed


@pytest.mark.parametrize("overrides, key", [({"runs": {}}, "`runs`"),
                                            ({"evaluation": {"batch_size": {}}}, "`evaluation.batch_size`")])
def test_an_empty_mapping_over_a_value_is_refused_not_ignored(overrides, key):
    with pytest.raises(UserError, match=f"config key {re.escape(key)}: `{{}}` \\(an empty mapping\\) cannot replace"):
        settings.resolve_config({"preset": "demo", **overrides})


def test_preset_switch_and_nested_override_from_command_line_strings():
    # `--config` hands nested values over as strings; they are read as the schema's types.
    config = resolve(preset="paper", hardware={"gpus_per_node": "4"}, run_overrides={"max_steps": "20"})
    assert config["model"]["source"] == "hub" and config["hardware"]["gpus_per_node"] == 4
    assert {run["max_steps"] for run in config["runs"]} == {20}
    assert config["hardware"]["accelerator"] == "cuda"  # untouched keys keep the preset's value


@pytest.mark.parametrize("overrides", [
    {"preset": "demo"},
    {"preset": "demo", "train": {"seeds": [0, 1]}},
    {"preset": "paper", "hardware": {"accelerator": "cpu", "gpus_per_node": 1}, "on_unsupported": "skip",
     "attention_fallback": {"flash_attention_2": "sdpa"}},
])
def test_what_resolution_adds_fits_the_schema(overrides):
    # The schema checks what the user gave, once; the ids, skip reasons and filled-in fields added after must fit it too.
    resolved = settings.resolve_config(overrides)
    config_schema.validate(copy.deepcopy(resolved), settings.load_schema())


def test_defaults_are_filled_and_run_ids_follow_the_convention():
    config = resolve()
    assert config["resources"]["train"]["threads"] == 1
    assert config["model"]["id"] == "microsoft/Phi-3.5-vision-instruct"
    run = settings.run_config(config, "docvqa", "lora-fp16-eager")
    assert isinstance(run, RunConfig) and run.run == "lora-fp16-eager"
    assert (run.lora_rank, run.lora_alpha, run.num_crops, run.deepspeed) == (16, 32, 2, False)


def test_demo_runs_every_accuracy_row_and_skips_gpu_speed_rows_with_reasons():
    config = resolve()
    assert not [r for r in config["runs"] if r["skip_reason"]]
    reasons = {row["row"]: row["skip_reason"] for row in config["speed"]["rows"]}
    assert reasons["full-flash_attention_2-bf16-2x16"] == "needs GPU; needs 2 nodes"
    assert reasons["full-eager-bf16-1x8"] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"preset": "nope"}, "config key `preset`: unknown preset 'nope'"),
        ({"hardware": {"nodes": "two"}}, "config key `hardware.nodes`: 'two' is a str, expected integer"),
        ({"runs": [{"dataset": "docvqa", "strategy": "dpo", "precision": "bf16", "attention": "sdpa",
                    "learning_rate": 1, "epochs": 1}]}, "config key `runs[0].strategy`: 'dpo' is not allowed; allowed values: full, frozen_vision, lora, qlora"),
        ({"runs": [{"dataset": "chartqa", "strategy": "full", "precision": "bf16", "attention": "sdpa",
                    "learning_rate": 1, "epochs": 1}]}, "config key `runs[0].dataset`: unknown dataset 'chartqa'"),
        ({"runs": [{"dataset": "docvqa", "strategy": "full", "precision": "bf16", "attention": "sdpa",
                    "epochs": 1}]}, "config key `runs[0]`: 'learning_rate' is a required property"),
        ({"model": {"source": "demo", "colour": "red"}}, "config key `model`: unknown key(s) 'colour'; allowed keys: cache_dir, id, revision, source"),
        ({"train": {"colour": "red"}}, "config key `train`: unknown key(s) 'colour'; allowed keys: adapter_dtype, attention, "),
        ({"run_overrides": {"precision": "fp16", "attention": "flash_attention_2"}}, "flash_attention_2 does not support fp16"),
        ({"on_unsupported": "error", "runs_filter": ["docvqa/*"]}, "needs GPU"),
        ({"runs": [{"dataset": "docvqa", "strategy": "full", "precision": "bf16", "attention": "sdpa",
                    "learning_rate": 1, "epochs": 1, "lora_rank": 8}]}, "lora_rank only apply to LoRA runs"),
        ({"runs": [{"dataset": "docvqa", "strategy": "lora", "precision": "bf16", "attention": "sdpa", "learning_rate": 1,
                    "epochs": 1, "lora_rank": 8, "lora_alpha": 16, "deepspeed": True}]},
         "config key `runs[0]` (docvqa): run 'lora-bf16-sdpa': deepspeed: true only applies to full-parameter runs"),
        ({"train": {"batch_size": 6}}, "batch_size 6 is not divisible by per_device_batch_size 4 x 1 processes"),
        ({"runs_filter": ["nothing/*"]}, "config key `runs_filter`: ['nothing/*'] matches no run"),
    ],
)
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(UserError) as error:
        resolve(**overrides)
    assert message in str(error.value)


def test_section_wide_deepspeed_and_lora_settings_apply_where_the_strategy_uses_them():
    config = resolve(train={"deepspeed": True, "lora_dropout": 0.1}, run_overrides={"lora_rank": 4})
    for run in config["runs"]:
        lora = run["strategy"] in ("lora", "qlora")
        assert run["deepspeed"] is not lora
        assert run["lora_rank"] == (4 if lora else None) and run["lora_dropout"] == 0.1


def test_unsupported_runs_skip_only_when_the_preset_says_so():
    nlvr2 = [run for run in settings.load_preset("demo")["runs"] if run["dataset"] == "nlvr2"]
    config = resolve(on_unsupported="skip", runs=nlvr2, run_overrides={"attention": "flash_attention_2"})
    assert {run["skip_reason"] for run in config["runs"]} == {"needs GPU"}
    assert settings.evaluations(config) == [(d, "base") for d in settings.evaluated_datasets(config)]


def test_runs_filter_string_and_helpers():
    config = resolve(runs_filter="nlvr2/*,speed/full-*")
    assert settings.runs_for(config, "nlvr2") == ["full-bf16-sdpa", "frozen_vision-bf16-sdpa"]
    assert settings.speed_rows(config) == ["full-eager-bf16-1x8"]
    assert settings.used_datasets(config) == ["docvqa", "nlvr2"]  # the speed rows read DocVQA
    options = settings.evaluation_options(config, "nlvr2", "base")
    assert (options["split"], options["metric"], options["attention"]) == ("test", "accuracy", "sdpa")


def test_runs_filter_may_select_only_speed_rows():
    config = resolve(runs_filter="speed/*")
    assert config["runs"] == [] and settings.speed_rows(config) == ["full-eager-bf16-1x8", "frozen_vision-eager-bf16-1x8",
                                                                      "lora-eager-bf16-1x8", "qlora-eager-bf16-1x8"]


def test_custom_dataset_needs_a_path_and_wildcards_match_exactly():
    with pytest.raises(UserError, match="source custom needs `path`"):
        resolve(datasets={"mine": {"source": "custom", "metric": "accuracy"}})
    config = resolve(datasets={"mine": {"source": "custom", "metric": "accuracy", "path": "/data/mine"}})
    assert settings.datasets_by_source(config, "custom") == ["mine"]
    assert settings.wildcard_pattern([]) == "(?!)"
    assert settings.wildcard_pattern(["a.b", "c"]) == r"a\.b|c"


def test_paper_ucf101_row_is_the_scripts_defaults():
    """The guide starts UCF-101 with only --data_dir: the UCF-101 script's own defaults apply."""
    config = settings.resolve_config({"preset": "paper"})
    (run,) = [r for r in config["runs"] if r["dataset"] == "ucf101"]
    assert (run["strategy"], run["precision"], run["attention"]) == ("full", "fp16", "eager")
    assert (run["batch_size"], run["per_device_batch_size"], run["learning_rate"], run["epochs"]) == (16, 1, 4e-5, 1)
    assert (run["num_crops"], run["deepspeed"], run["warmup_steps"]) == (4, True, 50)


def test_paper_speed_rows_hold_both_recipe_tables():
    rows = {row["row"] for row in settings.resolve_config({"preset": "paper"})["speed"]["rows"]}
    v100 = {"full-eager-fp16-1x8", "full-eager-fp16-2x16", "full-eager-fp16-4x32", "frozen_vision-eager-fp16-1x8",
            "lora-eager-fp16-1x8"}
    assert v100 <= rows and "full-eager-bf16-1x8" in rows and len(rows) == 15


def test_docvqa_draws_per_visit_and_the_rest_train_every_turn():
    for preset in ("paper", "demo"):
        config = settings.resolve_config({"preset": preset})
        turns = {r["dataset"]: r["train_turns"] for r in config["runs"]}
        assert turns["docvqa"] == "one_random" and turns["nlvr2"] == turns["hateful_memes"] == "all"
    config = settings.resolve_config({"preset": "demo", "datasets": {"docvqa": {"train_turns": "all"}}})
    assert {r["train_turns"] for r in config["runs"] if r["dataset"] == "docvqa"} == {"all"}


def test_a_dataset_may_start_from_its_own_model():
    old = "microsoft/Phi-3-vision-128k-instruct"
    config = settings.resolve_config({"preset": "paper", "datasets": {"docvqa": {"model": {"id": old}}}})
    assert config["datasets"]["docvqa"]["model"] == {"id": old, "revision": None}
    assert config["datasets"]["nlvr2"]["model"] == {"id": "microsoft/Phi-3.5-vision-instruct", "revision": None}
    assert settings.dataset_model_key(config, "nlvr2") is None
    assert settings.dataset_models(config) == {"microsoft--Phi-3-vision-128k-instruct": {"id": old, "revision": None}}
    assert settings.dataset_models(settings.resolve_config(config)) == settings.dataset_models(config)  # resolves again
    with pytest.raises(UserError, match=r"datasets\.docvqa\.model.*model.source"):
        settings.resolve_config({"preset": "demo", "datasets": {"docvqa": {"model": {"id": old}}}})


def test_lora_runs_are_evaluated_in_the_precision_the_recipe_reloads_them_in():
    config = settings.resolve_config({"preset": "paper"})
    assert settings.evaluation_options(config, "docvqa", "lora-fp16-eager")["precision"] == "fp32"
    assert settings.evaluation_options(config, "docvqa", "full-fp16-eager")["precision"] == "fp16"
    assert settings.evaluation_options(config, "docvqa", "qlora-bf16-flash_attention_2")["precision"] == "bf16"


def test_attention_fallback_runs_the_paper_flash_rows_with_sdpa_on_a_cpu():
    config = resolve(preset="paper", hardware={"accelerator": "cpu", "gpus_per_node": 1}, on_unsupported="skip",
                     attention_fallback={"flash_attention_2": "sdpa"})
    docvqa = {run["run"]: run for run in config["runs"] if run["dataset"] == "docvqa"}
    assert docvqa["full-bf16-sdpa"]["configured_attention"] == "flash_attention_2"
    assert "configured_attention" not in docvqa["full-fp16-eager"]  # eager rows stay as they are
    skipped = {f"{r['dataset']}/{r['run']}": r["skip_reason"] for r in config["runs"] if r["skip_reason"]}
    assert set(skipped.values()) == {"DeepSpeed fp16 needs GPU"}  # full and frozen fp16 rows under ZeRO-2
    assert "docvqa/full-fp16-eager" in skipped and "docvqa/lora-fp16-eager" not in skipped
    assert settings.run_config(config, "docvqa", "full-bf16-sdpa").attention == "sdpa"
    assert settings.evaluation_options(config, "nlvr2", "base")["attention"] == "sdpa"
    assert config["evaluation"]["configured_base_attention"] == "flash_attention_2"
    rows = {row["row"]: row for row in config["speed"]["rows"]}
    assert rows["lora-sdpa-bf16-1x8"]["configured_attention"] == "flash_attention_2"
    assert rows["full-sdpa-bf16-2x16"]["skip_reason"] == "needs 2 nodes"  # nodes still missing
    assert settings.resolve_config(config)["runs"] == config["runs"]  # resolving again changes nothing
    # On GPUs the fallback does nothing; without it a CPU skips the flash rows.
    on_gpu = resolve(preset="paper", attention_fallback={"flash_attention_2": "sdpa"})
    assert {run["attention"] for run in on_gpu["runs"]} == {"flash_attention_2", "eager"}
    without = resolve(preset="paper", hardware={"accelerator": "cpu", "gpus_per_node": 1}, on_unsupported="skip",
                      evaluation={"base_attention": "sdpa"})
    assert {r["skip_reason"] for r in without["runs"] if r["attention"] == "flash_attention_2"} == {"needs GPU"}


def test_converter_options_from_the_command_line_are_typed():
    config = resolve(preset="paper", datasets={"nlvr2": {"convert": {"eval_size": "3", "skip_corrupt": "true"}}})
    assert config["datasets"]["nlvr2"]["convert"] == {"eval_size": 3, "skip_corrupt": True}


def test_speed_row_overrides_apply_to_every_row():
    config = resolve(preset="paper", speed={"row_overrides": {"effective_batch": "2"}})
    assert {row["effective_batch"] for row in config["speed"]["rows"]} == {2}


def test_speed_rows_use_deepspeed_as_the_presets_runs_do():
    paper = settings.resolve_config({"preset": "paper"})
    for row in paper["speed"]["rows"]:  # train.deepspeed: true in the paper preset
        assert row["deepspeed"] is (row["strategy"] in ("full", "frozen_vision")), row["row"]
    assert not any(row["deepspeed"] for row in resolve()["speed"]["rows"])  # the demo trains without it
    # DeepSpeed's CPU accelerator has no fp16: such a row is listed as not run, with the fix
    on_cpu = {"preset": "paper", "hardware": {"accelerator": "cpu", "gpus_per_node": 1, "nodes": 4},
              "attention_fallback": {"flash_attention_2": "sdpa"}}
    reasons = {row["row"]: row["skip_reason"] for row in resolve(**on_cpu, on_unsupported="skip")["speed"]["rows"]}
    assert reasons["full-eager-fp16-1x8"] == "DeepSpeed fp16 needs GPU"
    assert reasons["lora-eager-fp16-1x8"] is None and reasons["full-eager-bf16-1x8"] is None
    with pytest.raises(UserError, match=r"speed.rows\[\d+\]` \(full-eager-fp16-1x8\).*set `train.deepspeed: false`"):
        resolve(**on_cpu, on_unsupported="error", runs=[])
    without = resolve(**on_cpu, train={"deepspeed": False}, runs_filter="speed/*-fp16-1x8")["speed"]["rows"]
    assert without and not any(row["skip_reason"] or row["deepspeed"] for row in without)


def test_auroc_for_hateful_memes_and_lmms_eval_protocol_only_when_asked():
    config = resolve()
    options = {dataset: settings.evaluation_options(config, dataset, "base") for dataset in config["datasets"]}
    assert [d for d, o in options.items() if o["auroc"]] == ["hateful_memes"]
    assert settings.lmms_eval_evaluations(config) == []  # off by default
    assert "docvqa_val" not in settings.used_datasets(config) and "docvqa_val" not in settings.tokenizer_datasets(config)
    config = resolve(evaluation={"lmms_eval": "true"})  # --config passes strings
    pairs = settings.lmms_eval_evaluations(config)
    assert pairs == [("docvqa", "base")] + [("docvqa", run) for run in settings.runs_for(config, "docvqa")]
    assert "docvqa_val" in settings.used_datasets(config)
    options = settings.lmms_eval_options(config, "docvqa", "lora-fp16-eager")
    assert options == {"split": "val", "metric": "anls", "num_crops": 2, "precision": "fp32", "attention": "eager",
                       "max_samples": 16, "protocol": "lmms_eval"}  # the run's model settings, the split's questions
    with pytest.raises(UserError, match=r"evaluation.lmms_eval`: 'sometimes' is a str, expected boolean"):
        resolve(evaluation={"lmms_eval": "sometimes"})


def test_lmms_eval_needs_a_docvqa_val_dataset_that_no_run_trains_on():
    with pytest.raises(UserError, match=r"`evaluation.lmms_eval_dataset`: 'docvqa' has task 'docvqa'.*"
                                        r"task: docvqa_val, metric: anls, eval_split: val"):
        resolve(evaluation={"lmms_eval": True, "lmms_eval_dataset": "docvqa"})
    with pytest.raises(UserError, match=r"`evaluation.lmms_eval_dataset`: 'docvqa_test' is not a dataset"):
        resolve(evaluation={"lmms_eval": True, "lmms_eval_dataset": "docvqa_test"})
    resolve(evaluation={"lmms_eval_dataset": "docvqa"})  # not checked while the protocol is off
    run = {"dataset": "docvqa_val", "strategy": "full", "precision": "bf16", "attention": "sdpa",
           "learning_rate": 1e-4, "epochs": 1}
    with pytest.raises(UserError, match=r"`runs`: run 'full-bf16-sdpa' trains on `docvqa_val`, a docvqa_val dataset"):
        resolve(runs=[run])


def test_seeds_expand_a_run_into_one_run_per_seed_and_resolve_again_unchanged():
    nlvr2 = [run for run in settings.load_preset("demo")["runs"] if run["dataset"] == "nlvr2"]
    config = resolve(runs=[{**nlvr2[0], "seeds": [0, 1, 2]}, nlvr2[1]])
    runs = [(run["run"], run["seed"], run.get("seed_group")) for run in config["runs"]]
    assert runs == [("full-bf16-sdpa-seed0", 0, "full-bf16-sdpa"), ("full-bf16-sdpa-seed1", 1, "full-bf16-sdpa"),
                    ("full-bf16-sdpa-seed2", 2, "full-bf16-sdpa"), ("frozen_vision-bf16-sdpa", 0, None)]
    assert settings.run_config(config, "nlvr2", "full-bf16-sdpa-seed2").seed == 2
    assert settings.resolve_config(config)["runs"] == config["runs"]  # resolving again changes nothing
    assert ("nlvr2", "full-bf16-sdpa-seed1") in settings.evaluations(config)
    # a filter naming the run selects all its seeds; naming one seed selects that one
    selected = resolve(runs=[{**nlvr2[0], "seeds": [0, 1, 2]}, nlvr2[1]], runs_filter="nlvr2/full-bf16-sdpa")
    assert settings.runs_for(selected, "nlvr2") == ["full-bf16-sdpa-seed0", "full-bf16-sdpa-seed1", "full-bf16-sdpa-seed2"]
    selected = resolve(runs=[{**nlvr2[0], "seeds": [0, 1, 2]}], runs_filter="nlvr2/full-bf16-sdpa-seed1")
    assert settings.runs_for(selected, "nlvr2") == ["full-bf16-sdpa-seed1"]


def test_preset_wide_seeds_and_a_single_seed_keeps_the_plain_id():
    nlvr2 = [run for run in settings.load_preset("demo")["runs"] if run["dataset"] == "nlvr2"]
    config = resolve(runs=nlvr2, train={"seeds": [3, 4]})
    assert [run["run"] for run in config["runs"]] == [
        "full-bf16-sdpa-seed3", "full-bf16-sdpa-seed4", "frozen_vision-bf16-sdpa-seed3", "frozen_vision-bf16-sdpa-seed4"]
    config = resolve(runs=[{**nlvr2[0], "seeds": [7]}])
    assert [(run["run"], run["seed"]) for run in config["runs"]] == [("full-bf16-sdpa", 7)]
    assert settings.resolve_config(config)["runs"] == config["runs"]
    with pytest.raises(UserError, match=r"`run_overrides.seeds`: set `seeds` in `train`"):
        resolve(runs=nlvr2, run_overrides={"seeds": [0, 1]})
    with pytest.raises(UserError, match=r"runs\[0\].seeds"):
        resolve(runs=[{**nlvr2[0], "seeds": [1, 1]}])


def test_the_schema_lists_the_tasks_the_converters_read():
    task = settings.load_schema()["$defs"]["dataset"]["properties"]["task"]
    assert tuple(task["enum"]) == settings.TASKS


def test_every_job_gets_its_resolved_run_config_as_run_json():
    config = settings.resolve_config({"preset": "demo"})
    run = settings.active_runs(config)[0]
    spec = settings.run_spec(config, run["dataset"], run["run"])
    assert settings.run_json(spec) == settings.run_config(config, run["dataset"], run["run"]).to_json()
    row = settings.active_speed_rows(config)[0]
    speed_run = RunConfig.from_dict(row["run_config"])
    assert settings.run_json(row["run_config"]) == speed_run.to_json()
    speed = config["speed"]
    assert (speed_run.run, speed_run.dataset, speed_run.num_crops, speed_run.batch_size, speed_run.max_steps) == (
        f"speed-{row['row']}", speed["dataset"], speed["num_crops"], row["effective_batch"],
        speed["warmup"] + speed["steps"])
    assert speed_run.learning_rate == speed["learning_rate"] == 1e-5


def test_a_speed_row_is_refused_at_resolution_when_its_run_config_is():
    with pytest.raises(UserError, match=r"speed.rows\[0\].*memory_budget_gib chooses checkpointed_layers"):
        settings.resolve_config({"preset": "demo", "speed": {"rows": [
            {"strategy": "full", "attention": "sdpa", "precision": "bf16", "nodes": 1, "gpus": 1,
             "effective_batch": 2, "memory_budget_gib": 4, "checkpointed_layers": 1}]}})
