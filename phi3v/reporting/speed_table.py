"""The recipe's speed tables filled with this workflow's measurements, and this project's best settings."""

from __future__ import annotations

from typing import Sequence

from phi3v.reporting.departures import table_notes
from phi3v.layout import ReportInputs
from phi3v.reporting.recipe_tables import (
    CHECK_MARK,
    METHOD_OF_STRATEGY,
    SPEED_NOTE,
    SPEED_TABLES,
    SpeedRow,
    SpeedTable,
    split_cells,
)
from phi3v.reporting.results import ResultSources, read_speed_result
from phi3v.training.run_config import setting_labels
from phi3v.reporting.table_format import (
    GIB_IN_GB,
    MISSING,
    TableDocument,
    extend_header,
    fallback_notes,
    format_memory,
    skip_note,
    table_lines,
)

FLASH_ATTENTION = "flash_attention_2"
DEEPSPEED = "DeepSpeed ZeRO-2"  # the Row cell of a row measured under it
RECIPE_SETTINGS, BEST_SETTINGS = "recipe", "best"  # a speed row's `settings`
BEST_SETTINGS_TITLE = "This project's best settings"
SETTING_LABELS = setting_labels()  # run field -> the Settings cell's words when it is on
RECIPE_TOKENS_PER_SAMPLE = 2443.23  # the recipe's DocVQA speed input, tokens a sample at num_crops 16


def settings_summary(settings: dict | None) -> str:
    """The settings a row ran with, in a few words (what differs from the recipe's step)."""
    if not settings:
        return MISSING
    layers = settings.get("checkpointed_layers")
    words = [f"batch {settings.get('per_device_batch_size', 1)}/GPU",
             ("no checkpointing" if not settings.get("gradient_checkpointing")
              else f"{'all' if layers is None else layers} layers checkpointed")]
    words += [label for key, label in SETTING_LABELS.items() if settings.get(key)]
    return ", ".join(words)


def settings_speed_lines(measured_rows: Sequence[tuple[str, dict]]) -> list[str]:
    """A speed table of (row name, measurement) with the recipe table's columns plus the settings used."""
    columns = ["Training method", "Nodes", "GPUs", "Flash attention", "Effective batch", "img/s",
               "Speedup", "Peak mem (GiB)", "Peak mem (GB)", "Tokens/s", "MFU", "data type", "Settings", "Row"]
    lines = []
    for name, measured in measured_rows:
        cells = measured_speed_cells(METHOD_OF_STRATEGY[measured["strategy"]], measured, None, False)
        lines.append([*cells, *extra_speed_cells(measured), settings_summary(measured.get("settings")),
                      speed_row_note({"row": name}, measured)])
    return table_lines(columns, lines)


def matches_speed_row(config_row: dict, recipe_row, table: SpeedTable) -> bool:
    return (
        config_row.get("settings", RECIPE_SETTINGS) == RECIPE_SETTINGS
        and config_row["strategy"] == recipe_row.strategy
        and (configured_attention(config_row) == FLASH_ATTENTION) == recipe_row.flash_attention
        and config_row["nodes"] == recipe_row.nodes
        and config_row["precision"] == table.precision
    )


def configured_attention(row: dict) -> str:
    """The attention the preset gave a row (before any `attention_fallback`)."""
    return row.get("configured_attention") or row["attention"]


def speed_row_note(row: dict, measured: dict | None = None) -> str:
    """The Row cell: the row's id, its attention fallback, and DeepSpeed where the measurement ran under it."""
    deepspeed = [DEEPSPEED] if measured and measured.get("deepspeed") else []
    return "; ".join([f"`{row['row']}`", *fallback_notes(row), *deepspeed])


def match_speed_rows(config_rows: Sequence[dict], table: SpeedTable, used: set[str]) -> list[dict | None]:
    """For each recipe row, the first unused configured row it matches (None if none); marks them used."""
    matched = []
    for recipe_row in table.rows:
        row = next((r for r in config_rows if r["row"] not in used
                    and matches_speed_row(r, recipe_row, table)), None)
        if row is not None:
            used.add(row["row"])
        matched.append(row)
    return matched


def speed_references(config: dict) -> dict[str, tuple[SpeedTable, SpeedRow]]:
    """Configured speed row name -> the recipe table and row it reproduces."""
    config_rows = (config.get("speed") or {}).get("rows") or []
    used: set[str] = set()
    references = {}
    for table in SPEED_TABLES:
        for recipe_row, row in zip(table.rows, match_speed_rows(config_rows, table, used)):
            if row is not None:
                references[row["row"]] = (table, recipe_row)
    return references


def measured_speed_cells(method: str, measured: dict, baseline: float | None, is_baseline: bool) -> list[str]:
    """The recipe's speed columns filled with one measurement."""
    img_per_s = measured["img_per_s"]
    if is_baseline:
        speedup = "1x"
    elif baseline:
        speedup = f"{img_per_s / baseline:.2f}x"
    else:
        speedup = MISSING
    return [
        method,
        str(measured.get("nodes", 1)),
        str(measured.get("gpus", 1)),
        CHECK_MARK if measured.get("attention") == FLASH_ATTENTION else "",
        str(measured.get("effective_batch", MISSING)),
        f"{img_per_s:.3f}",
        speedup,
        format_memory(measured.get("peak_mem_gib")),
    ]


def extra_speed_cells(measured: dict) -> list[str]:
    tokens = measured.get("tokens_per_s")
    mfu = measured.get("mfu")
    gib = measured.get("peak_mem_gib")
    return [
        format_memory(None if gib is None else gib * GIB_IN_GB),
        MISSING if tokens is None else f"{tokens:.1f}",
        MISSING if mfu is None else f"{100 * mfu:.1f}%",
        measured.get("precision", MISSING),
    ]


def speed_section(config: dict, inputs: ReportInputs, table: SpeedTable, used: set[str],
                  extra_rows: Sequence[dict], sources: ResultSources) -> list[str]:
    """One recipe speed table with this workflow's measurements in its columns."""
    hw = table.hardware
    added = ["Peak GPU mem (GB)", "Tokens/s", "MFU", "data type", f"{hw} GPUs", f"{hw} img/s",
             f"{hw} speedup", f"{hw} mem (GB)", "Row"]
    # the measured column holds what torch measures, GiB; the added GB column converts it to compare
    header, separator = extend_header(table.header.replace("Peak GPU mem (GB)", "Peak GPU mem (GiB)"),
                                      table.separator, added)
    config_rows = (config.get("speed") or {}).get("rows") or []

    matched = match_speed_rows(config_rows, table, used)

    def measurement(row: dict | None) -> dict | None:
        if row is None or row.get("skip_reason") is not None:
            return None
        return read_speed_result(inputs, row, sources)

    measurements = [measurement(row) for row in matched]
    baseline = measurements[0]["img_per_s"] if measurements[0] else None

    lines_rows = []
    for index, (recipe_row, row, measured) in enumerate(zip(table.rows, matched, measurements)):
        reference = [str(recipe_row.gpus), recipe_row.img_per_s, recipe_row.speedup,
                     recipe_row.peak_mem_gb]
        if measured is None:
            cells = [*recipe_row.cells[:5], MISSING, MISSING, MISSING, MISSING, MISSING, MISSING, table.precision]
            lines_rows.append([*cells, *reference, skip_note(row)])
            continue
        cells = measured_speed_cells(recipe_row.cells[0], measured, baseline, index == 0)
        lines_rows.append([*cells, *extra_speed_cells(measured), *reference, speed_row_note(row, measured)])

    # Rows of the preset with no counterpart in the recipe, in this table's precision.
    for row in extra_rows:
        if row["row"] in used or row["precision"] != table.precision:
            continue
        used.add(row["row"])
        measured = measurement(row)
        method = METHOD_OF_STRATEGY[row["strategy"]]
        if measured is None:
            flash = CHECK_MARK if row["attention"] == FLASH_ATTENTION else ""
            cells = [method, str(row["nodes"]), str(row["gpus"]), flash, str(row["effective_batch"]),
                     MISSING, MISSING, MISSING, MISSING, MISSING, MISSING, row["precision"]]
            lines_rows.append([*cells, MISSING, MISSING, MISSING, MISSING, skip_note(row)])
            continue
        cells = measured_speed_cells(method, measured, baseline, False)
        lines_rows.append([*cells, *extra_speed_cells(measured), MISSING, MISSING, MISSING, MISSING,
                           speed_row_note(row, measured)])

    return [f"## {table.title}", "", *table_lines(split_cells(header), lines_rows, header, separator)]


def tokens_per_sample_lines(config: dict, inputs: ReportInputs, sources: ResultSources) -> list[str]:
    """The measured input length of each row, beside the recipe's (older results lack it)."""
    rows = [row for row in (config.get("speed") or {}).get("rows") or [] if row.get("skip_reason") is None]
    measured = [(row["row"], read_speed_result(inputs, row, sources).get("tokens_per_sample")) for row in rows]
    measured = [(name, tokens) for name, tokens in measured if tokens is not None]
    if not measured:
        return []
    return ["", f"Input length measured here, tokens a sample (the recipe's DocVQA pages at num_crops 16: "
                f"{RECIPE_TOKENS_PER_SAMPLE}): " + ", ".join(f"`{name}` {tokens:.1f}" for name, tokens in measured) + "."]


def speed_document(config: dict, inputs: ReportInputs) -> TableDocument:
    sources = ResultSources()
    used: set[str] = set()
    config_rows = (config.get("speed") or {}).get("rows") or []
    body = [SPEED_NOTE, ""]
    weights = (config.get("speed") or {}).get("weights")
    best_rows = [row for row in config_rows if row.get("settings") == BEST_SETTINGS]
    recipe_rows = [row for row in config_rows if row.get("settings") != BEST_SETTINGS]
    for table in SPEED_TABLES:
        body += speed_section(config, inputs, table, used, recipe_rows, sources) + [""]
    if best_rows:
        measured = [(row["row"], read_speed_result(inputs, row, sources)) for row in best_rows
                    if row.get("skip_reason") is None]
        body += [f"## {BEST_SETTINGS_TITLE}", "", *settings_speed_lines(measured), ""]
        used.update(row["row"] for row in best_rows)
    leftover = [row["row"] for row in config_rows if row["row"] not in used]
    if leftover:
        body += [f"Rows of this preset in neither table's precision: {', '.join(leftover)}.", ""]
    body += [
        "Measured columns: this workflow's benchmark (img/s counted over the measured steps after "
        f"warm-up; peak memory: torch's peak allocation in GiB, and the same in GB (1 GiB = 1.074 GB) "
        f"beside the recipe's \"GB\", whose unit the recipe does not define; weights: "
        f"{weights or 'as configured'}). Speedup: against the table's first row as measured here. "
        "The recipe's columns are its 8-GPU reference values. The V100 rows run in fp16 mixed precision "
        "with eager attention, as the guide says.",
        *tokens_per_sample_lines(config, inputs, sources),
        *table_notes(config, config_rows, speed=True, name_key="row"),
    ]
    return TableDocument("speed.md", "Speed benchmarking", body, sources)
