"""Presets, config resolution and the run matrix of the workflow.

`resolve_config` turns what Snakemake read (config.yaml plus `--config` overrides) into the one
resolved configuration every rule reads: the named preset deep-merged with the overrides, checked
against `schemas/config.schema.yaml` (defaults filled in, unknown keys refused), the runs expanded
into flat run configs, and the flag combinations checked. The helpers below it answer the questions
the rules ask (which runs, which evaluations, which speed rows, what to pass to each job).
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from phi3v.errors import UserError
from phi3v.workflow.preflight import yaml_error_message

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path("schemas") / "config.schema.yaml"
PRESETS_DIR = Path("presets")

TASKS = ("docvqa", "docvqa_full", "hateful_memes", "nlvr2", "ucf101")  # docvqa_full: the recipe's --full_train
FULL_PARAMETER_STRATEGIES = ("full", "frozen_vision")
LORA_STRATEGIES = ("lora", "qlora")
LORA_FIELDS = ("lora_rank", "lora_alpha")
BASE_RUN = "base"  # evaluation name of the model before fine-tuning

# The recipe's training settings (AdamW, linear schedule); a preset's `train` section and each
# run override them.
RECIPE_TRAINING = {
    "batch_size": 64,
    "per_device_batch_size": 1,
    "lora_rank": None,
    "lora_alpha": None,
    "lora_dropout": 0.0,
    "weight_decay": 0.01,
    "warmup_steps": 50,
    "max_grad_norm": 1.0,
    "gradient_checkpointing": True,
    "packing": False,
    "checkpoint_every": None,
    "max_steps": None,
    "max_train_samples": None,
    "seed": 0,
    "deepspeed": False,
}

# Field order of a run config, as phi3v.training.train receives it.
RUN_CONFIG_FIELDS = (
    "dataset", "run", "strategy", "precision", "attention", "learning_rate", "epochs",
    "batch_size", "per_device_batch_size", "lora_rank", "lora_alpha", "lora_dropout",
    "weight_decay", "warmup_steps", "max_grad_norm", "num_crops", "gradient_checkpointing",
    "packing", "checkpoint_every", "max_steps", "max_train_samples", "seed", "deepspeed",
)


# ---------------------------------------------------------------------------------------------
# Files


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from a file; a missing file or bad YAML is the user's to fix."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise UserError(yaml_error_message(path, error)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values, found {type(data).__name__}")
    return data


def available_presets(repo_root: str | os.PathLike = REPO_ROOT) -> list[str]:
    return sorted(p.stem for p in (Path(repo_root) / PRESETS_DIR).glob("*.yaml"))


def load_preset(name: str, repo_root: str | os.PathLike = REPO_ROOT) -> dict:
    presets = available_presets(repo_root)
    if name not in presets:
        raise UserError(
            f"config key `preset`: unknown preset {name!r}; allowed values: {', '.join(presets)} "
            f"(files in {Path(repo_root) / PRESETS_DIR})"
        )
    return load_yaml(Path(repo_root) / PRESETS_DIR / f"{name}.yaml")


def load_schema(repo_root: str | os.PathLike = REPO_ROOT) -> dict:
    return load_yaml(Path(repo_root) / SCHEMA_PATH)


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`: mappings merge key by key, everything else (lists too) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------------------------------------
# Schema: string coercion, defaults, readable errors


def _resolve_ref(schema: dict, root: dict) -> dict:
    """The schema with a local `$ref` inlined (its own keys win; `properties` are combined)."""
    if "$ref" not in schema:
        return schema
    target = root
    for part in schema["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    target = _resolve_ref(target, root)
    merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    merged["properties"] = {**target.get("properties", {}), **schema.get("properties", {})}
    return merged


def _child_schema(schema: dict, key: str, root: dict) -> dict:
    schema = _resolve_ref(schema, root)
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _allowed_types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    types = set([kind] if isinstance(kind, str) else kind)
    if "enum" in schema:
        types |= {"null" if v is None else type(v).__name__.replace("str", "string") for v in schema["enum"]}
    return types


def _parse_scalar(text: str, types: set[str]) -> Any:
    """`--config` hands nested values over as strings: read them as the schema's type."""
    if not types or "string" in types:
        return text
    if "null" in types and text.strip().lower() in ("null", "none", "~", ""):
        return None
    if "boolean" in types and text.strip().lower() in ("true", "false", "yes", "no"):
        return text.strip().lower() in ("true", "yes")
    for kind, parse in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return parse(text)
            except ValueError:
                pass
    if "array" in types:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def coerce_strings(value: Any, schema: dict, root: dict) -> Any:
    """A copy of `value` with strings turned into the numbers, booleans and nulls the schema expects."""
    schema = _resolve_ref(schema, root)
    if isinstance(value, dict):
        return {key: coerce_strings(item, _child_schema(schema, key, root), root) for key, item in value.items()}
    if isinstance(value, list):
        items = schema.get("items", {})
        return [coerce_strings(item, items if isinstance(items, dict) else {}, root) for item in value]
    if isinstance(value, str):
        return _parse_scalar(value, _allowed_types(schema))
    return value


def _filling_defaults(validator_class):
    """A validator class that also writes each missing property's `default` into the instance."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties_with_defaults})


DefaultFillingValidator = _filling_defaults(jsonschema.Draft202012Validator)


def key_path(path: Iterable) -> str:
    """`["runs", 3, "precision"]` -> `runs[3].precision`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    return sorted(_resolve_ref(schema, root).get("properties", {}))


def describe_error(error: jsonschema.ValidationError, root: dict) -> str:
    """One line naming the key path, the offending value and what is allowed."""
    where = f"config key `{key_path(error.absolute_path)}`"
    kind, instance = error.validator, error.instance
    if kind == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return f"{where}: {instance!r} is not allowed; allowed values: {allowed}"
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(error.schema, root)
        unknown = sorted(set(instance) - set(allowed)) if allowed else sorted(instance)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key(s) {', '.join(map(repr, unknown))}{hint}"
    if kind == "required":
        return f"{where}: {error.message}; add it"
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        return f"{where}: {instance!r} is a {type(instance).__name__}, expected {wanted}"
    return f"{where}: {error.message}"


def validate_with_schema(config: dict, schema: dict) -> None:
    """Validate in place (filling defaults); raise one UserError that lists every problem."""
    validator = DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [describe_error(error, schema) for error in errors]
        raise UserError("invalid configuration:\n  " + "\n  ".join(lines))


# ---------------------------------------------------------------------------------------------
# Run matrix


def run_id(run: dict) -> str:
    return f"{run['strategy']}-{run['precision']}-{run['attention']}"


def speed_row_id(row: dict) -> str:
    return f"{row['strategy']}-{row['attention']}-{row['precision']}-{row['nodes']}x{row['gpus']}"


def processes_per_node(config: dict) -> int:
    """Training processes on each node: one per GPU; one on a CPU."""
    hardware = config["hardware"]
    return hardware["gpus_per_node"] if hardware["accelerator"] == "cuda" else 1


def _hardware_gaps(config: dict, attention: str, strategy: str, nodes: int = 1, gpus: int = 1) -> list[str]:
    """What this hardware lacks for a job, e.g. `["needs GPU"]`; empty when it can run."""
    hardware = config["hardware"]
    gaps = []
    # QLoRA is not listed: bitsandbytes quantises to NF4 on CPUs too, and the trainer checks at
    # start that it really can on this machine (refusing with the reason if not).
    if hardware["accelerator"] == "cpu" and attention == "flash_attention_2":
        gaps.append("needs GPU")
    if nodes > hardware["nodes"]:
        gaps.append(f"needs {nodes} nodes")
    elif hardware["accelerator"] == "cuda" and gpus > hardware["gpus_per_node"] * hardware["nodes"]:
        gaps.append(f"needs {gpus} GPUs")
    return gaps


def _skip_or_raise(config: dict, gaps: list[str], what: str, fix: str) -> str | None:
    if not gaps:
        return None
    if config["on_unsupported"] == "skip":
        return "; ".join(gaps)
    raise UserError(
        f"{what}: {', '.join(gaps)} but hardware is {config['hardware']}; {fix}, "
        "or set `on_unsupported: skip` to list it as not run"
    )


def _check_precision_attention(precision: str, attention: str, where: str) -> None:
    if precision == "fp16" and attention == "flash_attention_2":
        raise UserError(
            f"{where}: flash_attention_2 does not support fp16; use precision bf16, or attention "
            "eager or sdpa for fp16 (the recipe uses eager)"
        )


def expand_run(config: dict, index: int, row: dict) -> dict:
    """A run row of the preset -> the flat run config (defaults, run id, derived fields, skip_reason)."""
    where = f"config key `runs[{index}]`"
    dataset = row["dataset"]
    if dataset not in config["datasets"]:
        raise UserError(
            f"config key `runs[{index}].dataset`: unknown dataset {dataset!r}; allowed values: "
            f"{', '.join(config['datasets'])} (the keys of `datasets`)"
        )
    strategy = row["strategy"]
    if strategy in FULL_PARAMETER_STRATEGIES:
        given = [field for field in LORA_FIELDS if row.get(field) is not None]
        if given:
            raise UserError(
                f"{where} ({dataset}, {strategy}): {', '.join(given)} only apply to LoRA runs; "
                "remove them or use strategy lora or qlora"
            )
    run = {**RECIPE_TRAINING, "num_crops": config["datasets"][dataset]["num_crops"]}
    run.update(config["train"])
    run.update(row)
    run.update(config["run_overrides"])
    run["run"] = run_id(run)
    where = f"{where} ({dataset}/{run['run']})"
    if strategy in FULL_PARAMETER_STRATEGIES:
        run.update(lora_rank=None, lora_alpha=None)
    else:
        missing = [field for field in LORA_FIELDS if run.get(field) is None]
        if missing:
            raise UserError(f"{where}: strategy {strategy} needs {', '.join(missing)}; set them on the run")
    # The recipe trains full-parameter runs under DeepSpeed ZeRO-2 and LoRA runs under plain DDP.
    run["deepspeed"] = bool(run["deepspeed"]) and strategy in FULL_PARAMETER_STRATEGIES
    _check_precision_attention(run["precision"], run["attention"], where)
    processes = processes_per_node(config) * config["hardware"]["nodes"]
    if run["batch_size"] % (run["per_device_batch_size"] * processes):
        raise UserError(
            f"{where}: batch_size {run['batch_size']} is not divisible by per_device_batch_size "
            f"{run['per_device_batch_size']} x {processes} processes; change batch_size or per_device_batch_size"
        )
    gaps = _hardware_gaps(config, run["attention"], strategy, config["hardware"]["nodes"])
    fix = "use attention sdpa or eager" if run["attention"] == "flash_attention_2" else "use strategy lora"
    run["skip_reason"] = _skip_or_raise(config, gaps, where, fix)
    return {field: run[field] for field in (*RUN_CONFIG_FIELDS, "skip_reason")}


def expand_speed_row(config: dict, index: int, row: dict) -> dict:
    row = {**row, "row": speed_row_id(row)}
    where = f"config key `speed.rows[{index}]` ({row['row']})"
    _check_precision_attention(row["precision"], row["attention"], where)
    gaps = _hardware_gaps(config, row["attention"], row["strategy"], row["nodes"], row["gpus"])
    row["skip_reason"] = _skip_or_raise(config, gaps, where, "remove the row or change its attention/strategy")
    return row


def _check_unique(ids: list[str], what: str) -> None:
    seen = set()
    for name in ids:
        if name in seen:
            raise UserError(f"config key `{what}`: {name!r} appears twice; each row must differ in strategy/precision/attention")
        seen.add(name)


def _check_datasets(config: dict) -> None:
    for name, dataset in config["datasets"].items():
        where = f"config key `datasets.{name}`"
        if dataset["source"] == "custom":
            if not dataset.get("path"):
                raise UserError(f"{where}: source custom needs `path`, the folder with {name}_<split>.jsonl and images/")
            continue
        dataset.setdefault("task", name)
        if dataset["task"] not in TASKS:
            raise UserError(f"{where}: set `task` (which converter reads it); allowed values: {', '.join(TASKS)}")


def _select(config: dict, patterns: list[str] | None) -> None:
    """Keep only the runs (`<dataset>/<run>`) and speed rows (`speed/<row>`) the patterns match."""
    if patterns is None:
        return
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    runs = [run for run in config["runs"] if wanted(f"{run['dataset']}/{run['run']}")]
    rows = [row for row in config["speed"]["rows"] if wanted(f"speed/{row['row']}")]
    if not runs and not rows:
        examples = [f"{r['dataset']}/{r['run']}" for r in config["runs"][:2]] + ["speed/*"]
        raise UserError(
            f"config key `runs_filter`: {patterns} matches no run and no speed row; patterns look "
            f"like {', '.join(examples)}"
        )
    config["runs"], config["speed"]["rows"] = runs, rows


def resolve_config(config: dict, repo_root: str | os.PathLike = REPO_ROOT) -> dict:
    """Snakemake's config (config.yaml + --config) -> the resolved, validated configuration."""
    schema = load_schema(repo_root)
    preset = config.get("preset", "demo")
    if not isinstance(preset, str):
        raise UserError(f"config key `preset`: {preset!r} should be the name of a preset")
    merged = deep_merge(load_preset(preset, repo_root), config)
    merged = coerce_strings(merged, schema, schema)
    validate_with_schema(merged, schema)
    _check_datasets(merged)
    merged["runs"] = [expand_run(merged, i, row) for i, row in enumerate(merged["runs"])]
    merged["speed"]["rows"] = [expand_speed_row(merged, i, row) for i, row in enumerate(merged["speed"]["rows"])]
    for dataset in merged["datasets"]:
        _check_unique([r["run"] for r in merged["runs"] if r["dataset"] == dataset], f"runs ({dataset})")
    _check_unique([row["row"] for row in merged["speed"]["rows"]], "speed.rows")
    evaluation = merged["evaluation"]
    _check_precision_attention(evaluation["base_precision"], evaluation["base_attention"], "config key `evaluation`")
    if _hardware_gaps(merged, evaluation["base_attention"], "full"):
        raise UserError("config key `evaluation.base_attention`: flash_attention_2 needs a GPU; use sdpa or eager")
    _select(merged, merged["runs_filter"])
    if active_speed_rows(merged) and merged["speed"]["dataset"] not in merged["datasets"]:
        raise UserError(
            f"config key `speed.dataset`: unknown dataset {merged['speed']['dataset']!r}; allowed "
            f"values: {', '.join(merged['datasets'])}"
        )
    validate_with_schema(merged, schema)  # the expanded result must still fit the schema
    return merged


# ---------------------------------------------------------------------------------------------
# What the rules ask


def active_runs(config: dict) -> list[dict]:
    """The runs to train: selected and not skipped."""
    return [run for run in config["runs"] if run["skip_reason"] is None]


def runs_for(config: dict, dataset: str) -> list[str]:
    return [run["run"] for run in active_runs(config) if run["dataset"] == dataset]


def run_config(config: dict, dataset: str, run: str) -> dict:
    """The flat run config `phi3v.training.train.train` receives."""
    for entry in config["runs"]:
        if entry["dataset"] == dataset and entry["run"] == run:
            return {field: entry[field] for field in RUN_CONFIG_FIELDS}
    raise UserError(f"no run {dataset}/{run} in this configuration; runs: {[r['run'] for r in config['runs']]}")


def active_speed_rows(config: dict) -> list[dict]:
    return [row for row in config["speed"]["rows"] if row["skip_reason"] is None]


def speed_rows(config: dict) -> list[str]:
    return [row["row"] for row in active_speed_rows(config)]


def speed_row(config: dict, row_id: str) -> dict:
    for row in config["speed"]["rows"]:
        if row["row"] == row_id:
            return dict(row)
    raise UserError(f"no speed row {row_id!r}; rows: {speed_rows(config)}")


def evaluated_datasets(config: dict) -> list[str]:
    """Datasets with a run in the (filtered) matrix: each gets a base-model evaluation and a table."""
    return sorted({run["dataset"] for run in config["runs"]})


def used_datasets(config: dict) -> list[str]:
    """Every dataset some job reads."""
    used = set(evaluated_datasets(config))
    if active_speed_rows(config):
        used.add(config["speed"]["dataset"])
    return sorted(used)


def evaluations(config: dict) -> list[tuple[str, str]]:
    """(dataset, run) pairs to evaluate: the base model and every trained run."""
    pairs = [(dataset, BASE_RUN) for dataset in evaluated_datasets(config)]
    return pairs + [(run["dataset"], run["run"]) for run in active_runs(config)]


def datasets_by_source(config: dict, source: str) -> list[str]:
    return sorted(name for name, dataset in config["datasets"].items() if dataset["source"] == source)


def evaluation_options(config: dict, dataset: str, run: str) -> dict:
    """Keyword arguments of `phi3v.evaluation.evaluate.evaluate` that come from the config."""
    data = config["datasets"][dataset]
    evaluation = config["evaluation"]
    if run == BASE_RUN:
        precision, attention, num_crops = evaluation["base_precision"], evaluation["base_attention"], data["num_crops"]
    else:
        trained = run_config(config, dataset, run)
        precision, attention, num_crops = trained["precision"], trained["attention"], trained["num_crops"]
    return {
        "split": data["eval_split"],
        "metric": data["metric"],
        "num_crops": num_crops,
        "precision": precision,
        "attention": attention,
        "batch_size": evaluation["batch_size"],
        "max_new_tokens": evaluation["max_new_tokens"],
        "max_samples": evaluation["max_samples"],
    }


def wildcard_pattern(names: Iterable[str]) -> str:
    """A regex that matches exactly these names (and nothing when there are none)."""
    names = sorted(set(names))
    return "|".join(map(re.escape, names)) if names else "(?!)"
