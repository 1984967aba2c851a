"""Config resolution, and the questions the rules ask of the resolved config.

`resolve_config` turns what Snakemake read (config.yaml plus `--config` overrides) into the one
resolved configuration every rule reads: the overrides merged into the named preset (Snakemake's
`update_config`: mappings key by key, lists replaced), checked once against
`schemas/config.schema.yaml` (`phi3v.workflow.config_schema`: defaults filled in, unknown keys
refused), then the run matrix expanded and checked (`phi3v.workflow.matrix`). The helpers below it
answer the questions the rules ask (which runs, which evaluations, which speed rows, what to pass to
each job).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Iterable

import yaml
from snakemake.utils import update_config

from phi3v.errors import UserError
from phi3v.layout import BASE_RUN
from phi3v.data import recipe_train_turns
from phi3v.data.sources import TASK_MODULES
from phi3v.training.run_config import RunConfig, evaluation_precision
from phi3v.workflow import config_schema, matrix
from phi3v.workflow.preflight import yaml_error_message

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path("schemas") / "config.schema.yaml"
PRESETS_DIR = Path("presets")

# docvqa_full: the recipe's --full_train; docvqa_val: DocVQA validation for lmms-eval's protocol (no train split)
TASKS = tuple(TASK_MODULES)  # every task a converter reads
DOCVQA_TASKS = ("docvqa", "docvqa_full")  # the tasks whose tables lmms-eval's protocol adds a column to
LMMS_EVAL_TASK = "docvqa_val"
LMMS_EVAL_REPO = "lmms-lab-encoder/DocVQA"


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


# ---------------------------------------------------------------------------------------------
# Resolution: merge, validate, cross-field checks, the run matrix


def _resolve_dataset_model(config: dict, name: str, dataset: dict) -> None:
    """`model` of a dataset: its own hub model, or the preset's (filled in)."""
    preset_model = {"id": config["model"]["id"], "revision": config["model"]["revision"]}
    own = dataset.get("model")
    if own is None or own == preset_model:
        dataset["model"] = preset_model
        return
    if config["model"]["source"] != "hub":
        raise UserError(f"config key `datasets.{name}.model`: {own['id']!r} is a hub model but `model.source` "
                        f"is {config['model']['source']!r} — remove `datasets.{name}.model`, or use a preset "
                        "with `model.source: hub`")
    own.setdefault("revision", None)


def _check_datasets(config: dict) -> None:
    for name, dataset in config["datasets"].items():
        where = f"config key `datasets.{name}`"
        _resolve_dataset_model(config, name, dataset)
        if dataset["source"] == "custom":
            if not dataset.get("path"):
                raise UserError(f"{where}: source custom needs `path`, the folder with {name}_<split>.jsonl and images/")
            dataset.setdefault("train_turns", "all")
            continue
        dataset.setdefault("task", name)
        if dataset["task"] not in TASKS:
            raise UserError(f"{where}: set `task` (which converter reads it); allowed values: {', '.join(TASKS)}")
        dataset.setdefault("train_turns", recipe_train_turns(dataset["task"]))


def _check_lmms_eval(config: dict) -> None:
    """lmms-eval's protocol answers a docvqa_val dataset; a docvqa_val dataset has no split to train on."""
    for run in active_runs(config):
        if config["datasets"][run["dataset"]].get("task") == LMMS_EVAL_TASK:
            raise UserError(f"config key `runs`: run {run['run']!r} trains on `{run['dataset']}`, a {LMMS_EVAL_TASK} "
                            "dataset (DocVQA validation, for evaluation only) — train on a docvqa dataset instead")
    evaluation = config["evaluation"]
    if not evaluation["lmms_eval"]:
        return
    name = evaluation["lmms_eval_dataset"]
    dataset = config["datasets"].get(name)
    if dataset is None or dataset.get("task") != LMMS_EVAL_TASK:
        found = "is not a dataset" if dataset is None else f"has task {dataset.get('task')!r}"
        raise UserError(
            f"config key `evaluation.lmms_eval_dataset`: {name!r} {found}, but lmms-eval's protocol needs a dataset of "
            f"task {LMMS_EVAL_TASK} — add `datasets: {{{name}: {{source: hub, task: {LMMS_EVAL_TASK}, metric: anls, "
            f"eval_split: val}}}}` (DocVQA validation from {LMMS_EVAL_REPO}), as the presets do"
        )


def _check_cpu_hardware(config: dict) -> None:
    """GPUs per node on the CPU accelerator would be ignored (a CPU run is one process a node): refuse them."""
    hardware = config["hardware"]
    if hardware["accelerator"] == "cpu" and hardware["gpus_per_node"] != 1:
        raise UserError(
            f"config key `hardware.gpus_per_node` is {hardware['gpus_per_node']} but `hardware.accelerator` is cpu, "
            "which runs one process a node and uses no GPU — to train on GPUs set "
            f"`--config 'hardware={{accelerator: cuda, gpus_per_node: {hardware['gpus_per_node']}}}'`; "
            "on CPUs set `gpus_per_node: 1` (or leave it out)"
        )


def _refuse_empty_mappings_over_values(preset: dict, overrides: dict, path: tuple = ()) -> None:
    """`update_config` merges a mapping into what it overrides, so an empty one (`--config 'runs={}'`)
    would silently keep the preset's list or value: name the key instead."""
    for key, value in overrides.items():
        if not isinstance(value, dict):
            continue
        current = preset.get(key) if isinstance(preset, dict) else None
        if not value and current is not None and not isinstance(current, dict):
            raise UserError(f"config key `{config_schema.key_path((*path, key))}`: `{{}}` (an empty mapping) cannot "
                            f"replace the preset's {type(current).__name__}; give a "
                            f"{type(current).__name__}, or leave the key out to keep the preset's value")
        _refuse_empty_mappings_over_values(current if isinstance(current, dict) else {}, value, (*path, key))


def resolve_config(config: dict, repo_root: str | os.PathLike = REPO_ROOT) -> dict:
    """Snakemake's config (config.yaml + --config) -> the resolved, validated configuration."""
    schema = load_schema(repo_root)
    preset = config.get("preset", "demo")
    if not isinstance(preset, str):
        raise UserError(f"config key `preset`: {preset!r} should be the name of a preset")
    merged = load_preset(preset, repo_root)
    _refuse_empty_mappings_over_values(merged, config)
    update_config(merged, copy.deepcopy(config))  # mappings merge key by key, anything else (lists too) replaces
    config_schema.type_command_line_strings(merged, schema)
    config_schema.validate(merged, schema)  # the one validation: every problem listed, defaults filled in
    _check_cpu_hardware(merged)
    _check_datasets(merged)
    matrix.expand(merged)
    _check_lmms_eval(merged)
    if active_speed_rows(merged) and merged["speed"]["dataset"] not in merged["datasets"]:
        raise UserError(
            f"config key `speed.dataset`: unknown dataset {merged['speed']['dataset']!r}; allowed "
            f"values: {', '.join(merged['datasets'])}"
        )
    return merged


# ---------------------------------------------------------------------------------------------
# What the rules ask


def active_runs(config: dict) -> list[dict]:
    """The runs to train: selected and not skipped."""
    return [run for run in config["runs"] if run["skip_reason"] is None]


def runs_for(config: dict, dataset: str) -> list[str]:
    return [run["run"] for run in active_runs(config) if run["dataset"] == dataset]


def run_spec(config: dict, dataset: str, run: str) -> dict:
    """A run of the matrix as resolved: its RunConfig's fields, as plain data."""
    for entry in config["runs"]:
        if entry["dataset"] == dataset and entry["run"] == run:
            return {key: value for key, value in entry.items() if key not in matrix.ROW_ANNOTATIONS}
    raise UserError(f"no run {dataset}/{run} in this configuration; runs: {[r['run'] for r in config['runs']]}")


def run_config(config: dict, dataset: str, run: str) -> RunConfig:
    """The RunConfig of a run of the matrix, as `phi3v.training.train.train` receives it."""
    return RunConfig.from_dict(run_spec(config, dataset, run))


def run_json(spec: dict) -> str:
    """`--run-json` of a job, training run or speed row: its resolved RunConfig as `RunConfig.to_json` writes it."""
    return json.dumps(spec, sort_keys=True)


def active_speed_rows(config: dict) -> list[dict]:
    return [row for row in config["speed"]["rows"] if row["skip_reason"] is None]


def speed_rows(config: dict) -> list[str]:
    return [row["row"] for row in active_speed_rows(config)]


def speed_row(config: dict, row_id: str) -> dict:
    """A speed row as resolved: its id, nodes, GPUs and `settings`, and the RunConfig it trains with (`run_config`)."""
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
    if lmms_eval_evaluations(config):
        used.add(config["evaluation"]["lmms_eval_dataset"])
    return sorted(used)


def evaluations(config: dict) -> list[tuple[str, str]]:
    """(dataset, run) pairs to evaluate: the base model and every trained run."""
    pairs = [(dataset, BASE_RUN) for dataset in evaluated_datasets(config)]
    return pairs + [(run["dataset"], run["run"]) for run in active_runs(config)]


def tokenizer_datasets(config: dict) -> list[str]:
    """The datasets the demo's tokenizer is built from: every defined one (so no number depends on
    `runs_filter`) but DocVQA validation, which only lmms-eval's protocol reads (off by default), so
    turning that protocol on changes no other number."""
    return sorted(name for name, dataset in config["datasets"].items() if dataset.get("task") != LMMS_EVAL_TASK)


def datasets_by_source(config: dict, source: str) -> list[str]:
    return sorted(name for name, dataset in config["datasets"].items() if dataset["source"] == source)


def dataset_model_key(config: dict, dataset: str) -> str | None:
    """None when the dataset's runs start from the preset's model, else the folder name of its own
    (`owner--name[@revision]`, under `results/base_models/`)."""
    model = config["datasets"][dataset]["model"]
    if model == {"id": config["model"]["id"], "revision": config["model"]["revision"]}:
        return None
    key = model["id"].replace("/", "--")
    return key + (f"@{model['revision']}" if model["revision"] else "")


def dataset_models(config: dict) -> dict[str, dict]:
    """Model key -> hub model (`id`, `revision`) of the datasets some job reads that name their own."""
    models = {}
    for dataset in evaluated_datasets(config):
        key = dataset_model_key(config, dataset)
        if key is not None:
            models[key] = config["datasets"][dataset]["model"]
    return models


def evaluation_options(config: dict, dataset: str, run: str) -> dict:
    """Keyword arguments of `phi3v.evaluation.evaluate.evaluate` that come from the config."""
    data = config["datasets"][dataset]
    evaluation = config["evaluation"]
    if run == BASE_RUN:
        precision, attention, num_crops = evaluation["base_precision"], evaluation["base_attention"], data["num_crops"]
    else:
        trained = run_config(config, dataset, run)  # evaluated in the precision the recipe evaluates it in
        precision, attention, num_crops = evaluation_precision(trained), trained.attention, trained.num_crops
    return {
        "split": data["eval_split"],
        "metric": data["metric"],
        "num_crops": num_crops,
        "precision": precision,
        "attention": attention,
        "batch_size": evaluation["batch_size"],
        "stop_tokens": evaluation["stop_tokens"],
        "max_new_tokens": evaluation["max_new_tokens"],
        "max_samples": evaluation["max_samples"],
        "auroc": data.get("task") == "hateful_memes",  # the dataset's official metric
    }


def lmms_eval_evaluations(config: dict) -> list[tuple[str, str]]:
    """(dataset, run) pairs answered with lmms-eval's protocol: every evaluation of a DocVQA dataset, when on."""
    if not (config.get("evaluation") or {}).get("lmms_eval"):
        return []
    return [(dataset, run) for dataset, run in evaluations(config)
            if config["datasets"][dataset].get("task", dataset) in DOCVQA_TASKS]


def lmms_eval_options(config: dict, dataset: str, run: str) -> dict:
    """Keyword arguments of `phi3v.evaluation.evaluate.evaluate` for lmms-eval's protocol: the run's model
    settings (`evaluation_options`) on the `lmms_eval_dataset`'s split; the protocol fixes the rest."""
    options = evaluation_options(config, dataset, run)
    lmms_data = config["datasets"][config["evaluation"]["lmms_eval_dataset"]]
    return {
        "split": lmms_data["eval_split"],
        "metric": "anls",
        "num_crops": options["num_crops"],
        "precision": options["precision"],
        "attention": options["attention"],
        "max_samples": config["evaluation"]["lmms_eval_max_samples"],
        "protocol": "lmms_eval",
    }


def wildcard_pattern(names: Iterable[str]) -> str:
    """A regex that matches exactly these names (and nothing when there are none)."""
    names = sorted(set(names))
    return "|".join(map(re.escape, names)) if names else "(?!)"
