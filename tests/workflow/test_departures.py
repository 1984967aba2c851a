"""The departures registry: every setting of the schema is accounted for, and the tables' notes
name each departure with the rows it touches (computed from the resolved config)."""

from __future__ import annotations

from phi3v.reporting import departures
from phi3v.workflow import settings

PAPER_EXACT = {"train.loss_reduction", "train.adapter_dtype", "train.seed", "evaluation.batch_size",
               "evaluation.stop_tokens", "evaluation.max_new_tokens", "train.warmup_steps",
               "train.weight_decay", "train.per_device_batch_size", "train.gradient_checkpointing",
               "train.attention_mask"}


def schema_settings() -> set[str]:
    schema = settings.load_schema()
    run_fields = set(schema["$defs"]["run_fields"]["properties"])
    evaluation = set(schema["properties"]["evaluation"]["properties"])
    return {f"train.{key}" for key in run_fields} | {f"evaluation.{key}" for key in evaluation}


def test_every_schema_setting_is_a_departure_or_listed_as_none():
    named = {d.name for d in departures.DEPARTURES if d.is_setting}
    assert not named & set(departures.NOT_DEPARTURES)
    assert schema_settings() - named - set(departures.NOT_DEPARTURES) == set()
    stale = {name for name in named | set(departures.NOT_DEPARTURES)
             if name.startswith(("train.", "evaluation.")) and name not in schema_settings()}
    assert not stale
    assert "attention_fallback" in settings.load_schema()["properties"]


def lines_for(notes: list[str], name: str) -> list[str]:
    return [line for line in notes if line.startswith(f"- `{name}`") or line.startswith(f"- {name}:")]


def test_paper_preset_runs_the_recipes_values():
    config = settings.resolve_config({"preset": "paper"})
    for dataset in config["datasets"]:
        runs = [run for run in config["runs"] if run["dataset"] == dataset]
        touched = {d.name for run in runs for d in departures.departures_of(config, run)}
        assert not touched & PAPER_EXACT, (dataset, touched & PAPER_EXACT)


def test_a_departing_setting_is_noted_under_its_rows_only():
    config = settings.resolve_config({"preset": "paper", "runs": [
        {"dataset": "docvqa", "strategy": "lora", "precision": "bf16", "attention": "flash_attention_2",
         "learning_rate": 2e-4, "epochs": 2, "lora_rank": 32, "lora_alpha": 16, "loss_reduction": "token_mean",
         "adapter_dtype": "fp32"},
        {"dataset": "docvqa", "strategy": "full", "precision": "bf16", "attention": "flash_attention_2",
         "learning_rate": 5e-6, "epochs": 2}],
        "evaluation": {"batch_size": 8, "stop_tokens": "end_and_eos"}})
    runs = config["runs"]
    notes = departures.table_notes(config, runs, base={"run": "base"})
    [loss] = lines_for(notes, "train.loss_reduction")
    assert "token_mean" in loss and "`lora-bf16-flash_attention_2`" in loss and "full-" not in loss
    [adapter] = lines_for(notes, "train.adapter_dtype")
    assert "fp32" in adapter and "full-" not in adapter
    [batch] = lines_for(notes, "evaluation.batch_size")
    assert "8 examples at a time" in batch and batch.endswith("all rows.")  # both runs and the base model
    assert lines_for(notes, "evaluation.stop_tokens")
    assert not lines_for(notes, "train.seed")  # the paper preset's seed is the recipe's 42


def test_demo_tables_name_the_demos_departures():
    config = settings.resolve_config({"preset": "demo"})
    runs = [run for run in config["runs"] if run["dataset"] == "docvqa"]
    notes = departures.table_notes(config, runs, base={"run": "base"})
    assert lines_for(notes, "evaluation.batch_size") and lines_for(notes, "train.seed")
    [attention] = lines_for(notes, "train.attention")
    assert "sdpa" in attention and "`full-fp16-eager`" not in attention  # fp16 rows use eager, as the recipe
    [lora] = lines_for(notes, "LoRA evaluation")
    assert "`lora-bf16-sdpa`" in lora and "`full-bf16-sdpa`" not in lora
