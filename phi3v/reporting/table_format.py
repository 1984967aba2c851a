"""Markdown that the accuracy and speed tables share: cells, lines, notes, the document and its footer."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable, Sequence

from phi3v.reporting.results import ResultSources

NOT_IN_PRESET = "not in this preset"
MISSING = "—"


# ---------------------------------------------------------------------------------------------
# Cells and lines


def format_learning_rate(value: float) -> str:
    """`5e-6` as the recipe prints learning rates (no exponent padding)."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def format_delta(measured: float, reference: str, decimals: int) -> str:
    """Measured (as shown) minus the recipe's value, signed."""
    delta = round(measured, decimals) - float(reference)
    return f"{delta:+.{decimals}f}"


GIB_IN_GB = 2**30 / 1e9  # torch reports bytes; the recipe prints "GB" without saying how it measured


def format_memory(amount: float | None) -> str:
    """`~42` as the recipe prints peak memory; small values keep two decimals."""
    if amount is None:
        return MISSING
    return f"~{amount:.0f}" if amount >= 1 else f"~{amount:.2f}"


def table_lines(columns: Sequence[str], rows: Iterable[Sequence[str]], header: str | None = None,
                separator: str | None = None) -> list[str]:
    """Markdown lines; `header`/`separator` extend the recipe's own header text when given."""
    header = header if header is not None else " | ".join(columns)
    separator = separator if separator is not None else "--- | " * (len(columns) - 1) + "--- |"
    lines = [header, separator]
    for cells in rows:
        assert len(cells) == len(columns), (columns, cells)
        lines.append(" | ".join(cells) + " |")
    return lines


def extend_header(header: str, separator: str, added: Sequence[str]) -> tuple[str, str]:
    """The recipe's header and separator lines with the added columns appended."""
    header = header.rstrip().rstrip("|").rstrip() + "".join(f" | {name}" for name in added)
    separator = separator.rstrip() + "".join(" --- |" for _ in added)
    return header, separator


# ---------------------------------------------------------------------------------------------
# Notes


def fallback_notes(row: dict) -> list[str]:
    """A run or speed row that `attention_fallback` moved off the preset's attention (no GPU here)."""
    configured = row.get("configured_attention")
    if not configured:
        return []
    return [f"{row['attention']} instead of the preset's {configured} (attention_fallback: no GPU)"]


def skip_note(run: dict | None) -> str:
    return NOT_IN_PRESET if run is None else f"not run: {run['skip_reason']}"


# ---------------------------------------------------------------------------------------------
# Footer


def model_label(config: dict) -> str:
    model = config.get("model") or {}
    if model.get("source") == "demo":
        return "tiny Phi-3.5-vision (same architecture, small widths), pre-trained by the workflow"
    label = f"`{model.get('id')}`"
    if model.get("revision"):
        label += f" @ {model['revision']}"
    return label


def config_hardware_label(config: dict) -> str:
    hardware = config.get("hardware") or {}
    return (f"{hardware.get('accelerator', 'unknown')}, {hardware.get('nodes', 1)} node(s) x "
            f"{hardware.get('gpus_per_node', 1)} device(s) (as configured)")


def footer_lines(config: dict, sources: ResultSources) -> list[str]:
    hardware = "; ".join(sorted(sources.hardware)) or config_hardware_label(config)
    commit = ", ".join(sorted(sources.commits)) or "not recorded"
    if sources.newest_mtime is None:
        date = "none"
    else:
        moment = datetime.datetime.fromtimestamp(sources.newest_mtime, tz=datetime.timezone.utc)
        date = moment.strftime("%Y-%m-%d")
    return [
        f"Preset `{config.get('preset')}` · model {model_label(config)} · hardware: {hardware} · "
        f"commit {commit} · newest result: {date}.",
    ]


# ---------------------------------------------------------------------------------------------
# Documents


@dataclass
class TableDocument:
    """One regenerated table: its file name, title, body lines and the results it was built from."""

    file_name: str
    title: str
    body: list[str]
    sources: ResultSources
