"""The run matrix: a preset's run rows and speed rows, expanded, checked against the hardware, selected.

A run row becomes one `RunConfig` (the recipe's defaults, then the preset's `train` section, the
row, `run_overrides`); the config keeps it as plain data (`RunConfig.to_dict()` plus `skip_reason`),
because Snakemake's config must stay plain. A speed row keeps its id, nodes, GPUs and `settings` beside
the RunConfig it trains with (`run_config`, from `phi3v.training.run_config.speed_run`). A row the hardware cannot run gets a `skip_reason`, or
an error when the preset says `on_unsupported: error`, unless `attention_fallback` names an
attention it can run instead: then the row runs with that one (its id says so) and keeps the preset's
choice in `configured_attention`, which the tables' notes show.
"""

from __future__ import annotations

import fnmatch

from phi3v.errors import UserError
from phi3v.training.run_config import LORA_FIELDS, RunConfig, Strategy, check_precision_attention, run_id, speed_run
from phi3v.workflow.resources import processes_per_node


def speed_row_id(row: dict) -> str:
    best = "-best" if row.get("settings") == "best" else ""  # this project's settings beside the recipe's
    return f"{row['strategy']}-{row['attention']}-{row['precision']}-{row['nodes']}x{row['gpus']}{best}"


def hardware_gaps(config: dict, attention: str, nodes: int = 1, gpus: int = 1) -> list[str]:
    """What this hardware lacks for a job, e.g. `["needs GPU"]`; empty when it can run."""
    hardware = config["hardware"]
    gaps = []
    # QLoRA is not listed: bitsandbytes quantises to NF4 on CPUs too, and the trainer checks at
    # start that it really can on this machine (refusing with the reason if not).
    if hardware["accelerator"] == "cpu" and attention == "flash_attention_2":
        gaps.append("needs GPU")
    if nodes > hardware["nodes"]:
        gaps.append(f"needs {nodes} nodes")
    elif hardware["accelerator"] == "cuda" and gpus > hardware["gpus_per_node"] * nodes:
        gaps.append(f"needs {gpus // nodes} GPUs per node")
    return gaps


# keys of an expanded row that are not run settings
ROW_ANNOTATIONS = ("skip_reason", "configured_attention", "seed_group", "seeds")


def _apply_fallback(config: dict, row: dict) -> dict:
    """`row` (anything with an `attention`) with the `attention_fallback` of an attention this hardware
    cannot run (flash_attention_2 on a CPU); the preset's attention is kept in `configured_attention`."""
    configured = row.get("configured_attention") or row["attention"]  # set when resolved again
    fallback = config["attention_fallback"].get(configured)
    row = {key: value for key, value in row.items() if key != "configured_attention"}
    if fallback is not None and hardware_gaps(config, configured) and not hardware_gaps(config, fallback):
        row.update(attention=fallback, configured_attention=configured)
    return row


def _skip_or_raise(config: dict, gaps: list[str], what: str, fix: str) -> str | None:
    if not gaps:
        return None
    if config["on_unsupported"] == "skip":
        return "; ".join(gaps)
    raise UserError(
        f"{what}: {', '.join(gaps)} but hardware is {config['hardware']}; {fix}, "
        "or set `on_unsupported: skip` to list it as not run"
    )


def _applicable(fields: dict, strategy: Strategy) -> dict:
    """Section-wide settings (`train`, `run_overrides`) minus those the strategy does not use."""
    unused = ((() if strategy.needs_rank else LORA_FIELDS + ("lora_on_vision",))
              + (() if strategy.uses_deepspeed else ("deepspeed",)))
    return {key: value for key, value in fields.items() if key not in unused}


def expand_run(config: dict, index: int, row: dict) -> dict:
    """A run row of the preset -> its RunConfig as plain data, with `skip_reason`."""
    dataset = row["dataset"]
    if dataset not in config["datasets"]:
        raise UserError(
            f"config key `runs[{index}].dataset`: unknown dataset {dataset!r}; allowed values: "
            f"{', '.join(config['datasets'])} (the keys of `datasets`)"
        )
    strategy = Strategy(row["strategy"])
    data = config["datasets"][dataset]
    fields = {"num_crops": data["num_crops"], "train_turns": data["train_turns"],
              **_applicable(config["train"], strategy),
              **row, **_applicable(config["run_overrides"], strategy)}
    for annotation in ("skip_reason", "seed_group", "seeds"):  # present when an already expanded config is resolved again
        fields.pop(annotation, None)
    fields = _apply_fallback(config, fields)
    configured_attention = fields.pop("configured_attention", None)
    fields["run"] = run_id(fields["strategy"], fields["precision"], fields["attention"])
    try:
        run = RunConfig(**fields)
    except UserError as error:
        raise UserError(f"config key `runs[{index}]` ({dataset}): {error}") from None
    where = f"config key `runs[{index}]` ({dataset}/{run.run})"
    processes = processes_per_node(config) * config["hardware"]["nodes"]
    if run.batch_size % (run.per_device_batch_size * processes):
        raise UserError(
            f"{where}: batch_size {run.batch_size} is not divisible by per_device_batch_size "
            f"{run.per_device_batch_size} x {processes} processes; change batch_size or per_device_batch_size"
        )
    gaps = hardware_gaps(config, run.attention, config["hardware"]["nodes"])
    fix = ("use attention sdpa or eager, or set `attention_fallback: {flash_attention_2: sdpa}`"
           if run.attention == "flash_attention_2" else "use strategy lora")
    if gap := deepspeed_gap(config, run.deepspeed, run.precision):
        gaps.append(gap)
        fix = "set `deepspeed: false` (in `train` or `run_overrides`) to train it without ZeRO-2"
    fallback = {"configured_attention": configured_attention} if configured_attention else {}
    return {**run.to_dict(), **fallback, "skip_reason": _skip_or_raise(config, gaps, where, fix)}


def expand_seeds(config: dict, index: int, row: dict) -> list[dict]:
    """A run row -> one run per seed of its `seeds` (else of `train.seeds`). Several seeds: ids
    `<run>-seed<n>` with `seed_group: <run>`; one seed (or none) keeps the plain id."""
    seeds = row.get("seeds") or config["train"].get("seeds")
    if not seeds:
        return [expand_run(config, index, row)]
    grouped = len(seeds) > 1 or row.get("seed_group") is not None  # an expanded seed of a group stays one
    runs = []
    for seed in seeds:
        run = expand_run(config, index, {**row, "seed": seed})
        if grouped:
            group = run["run"]  # the plain run id expand_run gave it
            run.update(run=f"{group}-seed{seed}", seed_group=group, seeds=[seed])
        runs.append(run)
    return runs


def deepspeed_gap(config: dict, deepspeed: bool, precision: str) -> str | None:
    """DeepSpeed's CPU accelerator refuses fp16."""
    if deepspeed and precision == "fp16" and config["hardware"]["accelerator"] == "cpu":
        return "DeepSpeed fp16 needs GPU"
    return None


def expand_speed_row(config: dict, index: int, row: dict) -> dict:
    """A speed row of the preset -> the row (its id, nodes, GPUs, `settings`, `skip_reason`) with the
    RunConfig its job trains with in `run_config`, as plain data."""
    row = _apply_fallback(config, {**row, **config["speed"]["row_overrides"]})
    row["row"] = speed_row_id(row)
    # A row trains as the preset's runs of its strategy: under ZeRO-2 where `train.deepspeed` says so.
    row["deepspeed"] = Strategy(row["strategy"]).uses_deepspeed and config["train"].get("deepspeed", False)
    where = f"config key `speed.rows[{index}]` ({row['row']})"
    check_precision_attention(row["precision"], row["attention"], where)
    if row["gpus"] % row["nodes"]:
        raise UserError(f"{where}: gpus ({row['gpus']}) counts all nodes and must be a multiple of nodes "
                        f"({row['nodes']}); each node runs gpus / nodes processes")
    gaps = hardware_gaps(config, row["attention"], row["nodes"], row["gpus"])
    fix = "remove the row or change its attention/strategy"
    if gap := deepspeed_gap(config, row["deepspeed"], row["precision"]):
        gaps.append(gap)
        fix = "set `train.deepspeed: false` to measure it without ZeRO-2"
    row["skip_reason"] = _skip_or_raise(config, gaps, where, fix)
    try:  # the job trains with this, as a training run with its run config
        row["run_config"] = speed_run(row, config["speed"]).to_dict()
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    return row


def _check_unique(ids: list[str], what: str) -> None:
    seen = set()
    for name in ids:
        if name in seen:
            raise UserError(f"config key `{what}`: {name!r} appears twice; each row must differ in strategy/precision/attention")
        seen.add(name)


def _select(config: dict, patterns: list[str] | None) -> None:
    """Keep only the runs (`<dataset>/<run>`) and speed rows (`speed/<row>`) the patterns match."""
    if patterns is None:
        return
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    runs = [run for run in config["runs"] if wanted(f"{run['dataset']}/{run['run']}")
            or (run.get("seed_group") and wanted(f"{run['dataset']}/{run['seed_group']}"))]  # all its seeds
    rows = [row for row in config["speed"]["rows"] if wanted(f"speed/{row['row']}")]
    if not runs and not rows:
        examples = [f"{r['dataset']}/{r['run']}" for r in config["runs"][:2]] + ["speed/*"]
        raise UserError(
            f"config key `runs_filter`: {patterns} matches no run and no speed row; patterns look "
            f"like {', '.join(examples)}"
        )
    config["runs"], config["speed"]["rows"] = runs, rows


def expand(config: dict) -> None:
    """Expand, check and select the runs and speed rows of a schema-valid config, in place."""
    if config["run_overrides"].get("seeds"):
        raise UserError("config key `run_overrides.seeds`: set `seeds` in `train` (every run) or on a run")
    config["runs"] = [run for i, row in enumerate(config["runs"]) for run in expand_seeds(config, i, row)]
    config["speed"]["rows"] = [expand_speed_row(config, i, row) for i, row in enumerate(config["speed"]["rows"])]
    for dataset in config["datasets"]:
        _check_unique([r["run"] for r in config["runs"] if r["dataset"] == dataset], f"runs ({dataset})")
    _check_unique([row["row"] for row in config["speed"]["rows"]], "speed.rows")
    evaluation = config["evaluation"]
    check_precision_attention(evaluation["base_precision"], evaluation["base_attention"], "config key `evaluation`")
    base = _apply_fallback(config, {"attention": evaluation["base_attention"],
                                    "configured_attention": evaluation.pop("configured_base_attention", None)})
    evaluation["base_attention"] = base["attention"]
    if "configured_attention" in base:
        evaluation["configured_base_attention"] = base["configured_attention"]
    if hardware_gaps(config, evaluation["base_attention"]):
        raise UserError("config key `evaluation.base_attention`: flash_attention_2 needs a GPU; use sdpa or eager, "
                        "or set `attention_fallback: {flash_attention_2: sdpa}`")
    _select(config, config["runs_filter"])
