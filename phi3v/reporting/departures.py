"""Every way this project's rows can depart from the recipe's scripts, in one registry.

Each `Departure` names its setting (a config key, or none for a fixed behaviour of this project), the
recipe's value, which rows it touches (a test over one resolved row: a run, a speed row, or the base
evaluation) and its note. The tables' notes are generated from here (`table_notes`), so a departure
is named where its numbers are shown, and nowhere only in a docstring. No torch at import.

`NOT_DEPARTURES` lists the settings that are none (table columns the tables compare themselves, limits
that the row's note states, or settings that change no number), so that every setting of the schema's
runs and evaluation is accounted for here (tests/workflow/test_departures.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from phi3v.data import recipe_train_turns
from phi3v.layout import BASE_RUN
from phi3v.reporting.recipe_tables import RECIPE_TABLE_MODEL
from phi3v.training.run_config import NOT_TRAJECTORY, option_notes

TRAIN, EVALUATION, SPEED = "train", "evaluation", "speed"  # what a departure touches
RECIPE_SEED = 42  # HF Trainer's default: the scripts set none
RECIPE_NUM_CROPS = {"ucf101": 4}  # the scripts' --num_crops default; 16 for the others


@dataclass(frozen=True)
class Departure:
    name: str  # the setting (`train.<field>`, `evaluation.<key>`, a top-level key) or the behaviour
    recipe: str  # what the recipe's scripts do
    note: Callable[[dict, dict], str]  # (config, row) -> what this row does instead, in a few words
    touches: Callable[[dict, dict], bool]  # (config, row) -> does this row depart so
    scope: str = TRAIN  # TRAIN: training runs; EVALUATION: every evaluated row (runs and base); SPEED
    is_setting: bool = True  # a config setting (else a fixed behaviour of this project)


def _task(config: dict, row: dict) -> str | None:
    dataset = (config.get("datasets") or {}).get(row.get("dataset"), {})
    return dataset.get("task", row.get("dataset"))


def _is_lora(row: dict) -> bool:
    return row.get("strategy") in ("lora", "qlora")


def _recipe_attention(row: dict) -> str:
    """The scripts: flash attention with --bf16 --use_flash_attention (the tables' bf16 rows), eager otherwise."""
    return "flash_attention_2" if row.get("precision") == "bf16" else "eager"


def _attention(row: dict) -> str:
    return row.get("configured_attention") or row.get("attention")


def _devices(config: dict) -> int:
    hardware = config.get("hardware") or {}
    return hardware.get("gpus_per_node", 1) * hardware.get("nodes", 1)


def _evaluation(config: dict) -> dict:
    return config.get("evaluation") or {}


def _differs(field: str, recipe, note: str) -> tuple[Callable, Callable]:
    """(note, touches) for a run field whose recipe value is one constant."""
    return (lambda config, row: note.format(value=row.get(field)),
            lambda config, row: row.get(field, recipe) != recipe)


def _option(field: str, note: str) -> Departure:
    """An option beyond the recipe (off in the recipe): touches the rows that turn it on."""
    return Departure(f"train.{field}", "off, not in the recipe", lambda c, r: note.format(value=r.get(field)),
                     lambda c, r: r.get(field) not in (None, False))


DEPARTURES: tuple[Departure, ...] = (
    # ---- training settings ----------------------------------------------------------------------
    Departure("train.loss_reduction", "sample_mean, each sample's token mean, samples averaged",
              *_differs("loss_reduction", "sample_mean", "loss_reduction {value}: the mean over every "
                        "supervised token of the effective batch, so long answers weigh more")),
    Departure("train.adapter_dtype", "base: add_adapter in peft 0.11 keeps the base's dtype",
              lambda c, r: "adapter_dtype fp32: LoRA adapters upcast to fp32 (current peft's default)",
              lambda c, r: _is_lora(r) and r.get("adapter_dtype", "base") != "base"),
    Departure("train.seed", f"{RECIPE_SEED}, HF Trainer's default",
              *_differs("seed", RECIPE_SEED, "seed {value}")),
    Departure("train.train_turns", "one random Q/A pair a visit for DocVQA, every turn otherwise",
              lambda c, r: f"train_turns {r.get('train_turns')}",
              lambda c, r: r.get("train_turns", recipe_train_turns(_task(c, r))) != recipe_train_turns(_task(c, r))),
    Departure("train.freeze_token_embeddings", "true, frozen with the vision model",
              lambda c, r: "token embeddings trained (freeze_token_embeddings: false)",
              lambda c, r: r.get("strategy") == "frozen_vision" and r.get("freeze_token_embeddings") is False),
    Departure("train.lora_on_vision", "true in the tables' LoRA rows: adapters on CLIP and the projector too",
              lambda c, r: "LoRA on the language model only (lora_on_vision: false)",
              lambda c, r: r.get("lora_on_vision") is False),
    Departure("train.deepspeed", "DeepSpeed ZeRO-2 for full-parameter runs",
              lambda c, r: "no DeepSpeed: fp32 master weights, the run's precision by autocast",
              lambda c, r: not _is_lora(r) and r.get("deepspeed") is False),
    Departure("train.attention", "flash_attention_2 with bf16, eager with fp16, never SDPA",
              lambda c, r: f"attention {r.get('attention')}" + (" (stands in for flash attention where "
                                                                 "flash-attn cannot run)" if r.get("attention") == "sdpa" else ""),
              lambda c, r: r.get("attention") != _recipe_attention(r) and not r.get("configured_attention")),
    Departure("attention_fallback", "the configured attention, or no run",
              lambda c, r: f"{r.get('attention')} instead of the preset's {r.get('configured_attention')} "
                           "(attention_fallback: no GPU)",
              lambda c, r: bool(r.get("configured_attention")), scope=EVALUATION),
    Departure("train.attention_mask", "pad_id for NLVR2 (its collator masks every pad-id position, the "
              "<|endoftext|> closing each turn too), length elsewhere",
              lambda c, r: f"attention_mask {r.get('attention_mask', 'length')}",
              lambda c, r: r.get("attention_mask", "length") != ("pad_id" if _task(c, r) == "nlvr2" else "length")),
    Departure("UCF-101 ids", "numbered in glob order (the file system's listing order)",
              lambda c, r: "numbered over train, val, test with classes and files sorted (the same on every "
                           "file system)",
              lambda c, r: _task(c, r) == "ucf101", is_setting=False),
    Departure("train.num_crops", "16, 4 for UCF-101",
              lambda c, r: f"num_crops {r.get('num_crops')}",
              lambda c, r: r.get("num_crops") != RECIPE_NUM_CROPS.get(_task(c, r), 16)),
    Departure("train.per_device_batch_size", "1; NLVR2 and UCF-101 take --batch_size_per_gpu, default 1",
              *_differs("per_device_batch_size", 1, "per-device batch {value} (padded micro-batches)")),
    Departure("train.gradient_checkpointing", "true, non-reentrant",
              *_differs("gradient_checkpointing", True, "no gradient checkpointing (same numbers, more memory)")),
    Departure("train.weight_decay", "0.01 (--wd)", *_differs("weight_decay", 0.01, "weight decay {value}")),
    Departure("train.warmup_steps", "50", *_differs("warmup_steps", 50, "{value} warm-up steps")),
    Departure("train.max_grad_norm", "1.0", *_differs("max_grad_norm", 1.0, "gradient clipping at {value}")),
    Departure("train.lora_dropout", "0.0 (--lora_dropout)",
              lambda c, r: f"LoRA dropout {r.get('lora_dropout')}",
              lambda c, r: _is_lora(r) and r.get("lora_dropout", 0.0) != 0.0),
    *(_option(field, note) for field, note in option_notes().items()),  # each declared with its note
    # ---- evaluation settings --------------------------------------------------------------------
    Departure("evaluation.batch_size", "1 example at a time",
              lambda c, r: f"evaluated {_evaluation(c).get('batch_size')} examples at a time, left-padded "
                           "(greedy decoding in bf16/fp16 can change with padding)",
              lambda c, r: _evaluation(c).get("batch_size", 1) != 1, scope=EVALUATION),
    Departure("evaluation.stop_tokens", "eos, the tokenizer's eos only",
              lambda c, r: "generation also stops at <|end|> (stop_tokens: end_and_eos)",
              lambda c, r: _evaluation(c).get("stop_tokens", "eos") != "eos", scope=EVALUATION),
    Departure("evaluation.max_new_tokens", "64",
              lambda c, r: f"at most {_evaluation(c).get('max_new_tokens')} new tokens",
              lambda c, r: _evaluation(c).get("max_new_tokens", 64) != 64, scope=EVALUATION),
    Departure("evaluation.base_precision", "each run's script evaluates the model as it loads it before "
              "training: bf16 with flash attention, fp32 with eager, 4-bit for QLoRA",
              lambda c, r: f"the base model evaluated once per dataset, in {_evaluation(c).get('base_precision')} "
                           f"with {_evaluation(c).get('base_attention')} attention",
              lambda c, r: r.get("run") == BASE_RUN, scope=EVALUATION),
    # ---- fixed behaviours of this project -------------------------------------------------------
    Departure("LoRA evaluation", "the adapter loaded unmerged onto the base reloaded without quantisation",
              lambda c, r: "evaluated on the adapter merged into the unquantised base in fp32, then loaded in "
                           "the precision the recipe evaluates in (bf16 with flash attention or its stand-in, "
                           "else fp32): the same function up to rounding",
              lambda c, r: _is_lora(r), is_setting=False),
    Departure("LoRA wrapping", "transformers' add_adapter",
              lambda c, r: "peft's get_peft_model (the same adapters; their dtype per adapter_dtype)",
              lambda c, r: _is_lora(r), is_setting=False),
    Departure("one_random draws", "random.choice on Python's global state in the collator",
              lambda c, r: "the turn and answer drawn per visit are seeded by (seed, epoch, index), so "
                           "resuming redraws the same",
              lambda c, r: r.get("train_turns") == "one_random", is_setting=False),
    Departure("DDP unused parameters", "ddp_find_unused_parameters=False",
              lambda c, r: "DDP with find_unused_parameters=True (a micro-batch without images leaves the "
                           "vision tower without gradients)",
              lambda c, r: (_is_lora(r) or not r.get("deepspeed")) and _devices(c) > 1, is_setting=False),
    Departure("last incomplete batch", "trained, HF Trainer keeps it",
              lambda c, r: "an epoch's incomplete last batch is dropped",
              lambda c, r: True, is_setting=False),
    Departure("CLIP's last layer", "kept, unused, in full-parameter runs; dropped in LoRA runs",
              lambda c, r: "CLIP's unused last layer and post-layernorm dropped while training, saved back "
                           "from the base (no effect on outputs)",
              lambda c, r: not _is_lora(r), is_setting=False),
    # ---- speed rows -----------------------------------------------------------------------------
    Departure("speed reference model", f"its columns measured with {RECIPE_TABLE_MODEL}",
              lambda c, r: "measured with this preset's model (Phi-3.5-vision has Phi-3-vision's architecture "
                           "and sizes)",
              lambda c, r: True, scope=SPEED, is_setting=False),
    Departure("A100 rows without flash attention", "precision not stated; the script loads fp32 weights "
              "with eager attention, the guide recommends bf16 wherever the GPU has it",
              lambda c, r: "bf16: fp32-loaded weights, eager attention, bf16 autocast (bf16 weights under "
                           "DeepSpeed, which casts them)",
              lambda c, r: r.get("precision") == "bf16" and _attention(r) != "flash_attention_2",
              scope=SPEED, is_setting=False),
    Departure("speed.attention_fallback", "the configured attention, or no row",
              lambda c, r: f"{r.get('attention')} instead of the preset's {r.get('configured_attention')}",
              lambda c, r: bool(r.get("configured_attention")), scope=SPEED),
)

# Settings that are no departure: compared in the tables' own columns and notes, limits a row's note
# states, or settings that change no number (every schema key of runs and evaluation is here or above).
NOT_DEPARTURES = {
    # run fields declared not to change the weights (RunConfig's `trajectory=False`) change no number
    **{f"train.{name}": "changes no number (not in the checkpoint fingerprint)" for name in NOT_TRAJECTORY},
    "train.strategy": "the table's Training method column",
    "train.precision": "the table's data type column",
    "train.learning_rate": "compared in the row's note (differs: lr ...)",
    "train.epochs": "compared in the row's note",
    "train.batch_size": "compared in the row's note",
    "train.lora_rank": "compared in the row's note",
    "train.lora_alpha": "compared in the row's note",
    "train.checkpoint_every": "resuming gives the same numbers",
    "train.max_steps": "a limit the row's note states",
    "train.max_train_samples": "a limit the row's note states",
    "train.report_to": "experiment trackers change no number",
    "evaluation.max_samples": "the n under each table",
    "train.seeds": "several seeds show as mean ± sd in the cell (the recipe's runs are one seed each)",
    "evaluation.lmms_eval": "adds its own column, described under the table; the recipe's column is unchanged",
    "evaluation.lmms_eval_dataset": "the `ANLS (lmms-eval)` column's note names the data it answered",
    "evaluation.lmms_eval_max_samples": "the `ANLS (lmms-eval)` column's note states the cap",
    "evaluation.base_attention": "in the evaluation.base_precision note",
    "evaluation.configured_base_attention": "stated with the base model's line",
}


def departures_of(config: dict, row: dict, scopes: Sequence[str] = (TRAIN, EVALUATION)) -> list[Departure]:
    """The departures of one resolved row (a run, a speed row, or the base evaluation)."""
    return [d for d in DEPARTURES if d.scope in scopes and d.touches(config, row)]


def table_notes(config: dict, runs: Sequence[dict], base: dict | None = None, speed: bool = False,
                name_key: str = "run") -> list[str]:
    """Markdown lines under a table: each departure of its rows once, with the rows it touches.

    `runs`: the table's training runs (or speed rows, `speed=True`); `base`: the base model's
    evaluation as a row, which only evaluation departures touch."""
    runs = [row for row in runs if row.get("skip_reason") is None]
    lines = []
    for departure in DEPARTURES:
        if (departure.scope == SPEED) != speed:
            continue
        rows = runs + ([base] if base is not None and departure.scope == EVALUATION else [])
        touched = [row for row in rows if departure.touches(config, row)]
        if not touched:
            continue
        notes = list(dict.fromkeys(departure.note(config, row) for row in touched))
        which = ("all rows" if len(touched) == len(rows) and len(rows) > 1
                 else ", ".join(f"`{row[name_key]}`" for row in touched))
        setting = f"`{departure.name}`" if departure.is_setting else departure.name
        lines.append(f"- {setting}: {'; '.join(notes)}. The recipe: {departure.recipe}. Rows: {which}.")
    if not lines:
        return []
    return ["", "Departures from the recipe's scripts (phi3v/reporting/departures.py):", "", *lines]
