"""The recipe's tables regenerated from this workflow's results, beside the recipe's own values.

Every table keeps the recipe's columns, row order and number format first, then adds columns for
the recipe's value, the difference and notes. Nothing here reads the clock: regenerating from the
same results gives byte-identical files.

The tables are built by `accuracy_tables` and `speed_table`; this module gathers them into files.
"""

from __future__ import annotations

import os
from pathlib import Path

from phi3v.files import write_text_atomic
from phi3v.layout import ReportInputs
from phi3v.reporting.accuracy_tables import accuracy_document, extra_document
from phi3v.reporting.recipe_tables import ACCURACY_TABLES
from phi3v.reporting.speed_table import speed_document
from phi3v.reporting.table_format import TableDocument, footer_lines


def render(document: TableDocument, config: dict, level: int = 1) -> str:
    """A document as markdown; `level` 2 nests it under the results README."""
    body = [("#" * (level - 1) + line) if line.startswith("## ") else line for line in document.body]
    lines = ["#" * level + f" {document.title}", "", *body, "", *footer_lines(config, document.sources)]
    return "\n".join(lines) + "\n"


def extra_datasets(config: dict) -> list[str]:
    """Datasets with runs but no table in the recipe (UCF-101, custom ones), in configuration order."""
    recipe_datasets = {table.dataset for table in ACCURACY_TABLES}
    return list(dict.fromkeys(run["dataset"] for run in config.get("runs") or []
                              if run["dataset"] not in recipe_datasets))


def table_documents(config: dict, inputs: ReportInputs) -> list[TableDocument]:
    """Every table the configuration calls for: the recipe's four, then one per extra dataset."""
    documents = [accuracy_document(config, inputs, table) for table in ACCURACY_TABLES]
    documents.append(speed_document(config, inputs))
    documents += [extra_document(config, inputs, dataset) for dataset in extra_datasets(config)]
    return documents


def table_file_names(config: dict) -> list[str]:
    """The file names `write_tables` writes into its folder."""
    return ([table.file_name for table in ACCURACY_TABLES] + ["speed.md"]
            + [f"{dataset}.md" for dataset in extra_datasets(config)])


def write_tables(config: dict, inputs: ReportInputs, out_dir: str | os.PathLike,
                 readme: str | os.PathLike) -> list[Path]:
    """Write one markdown file per table into `out_dir`, and `readme` gathering them all.

    `inputs` are the result files the tables read. Returns the written paths. Raises UserError
    naming the run and the file when a result a table needs is missing or corrupt.
    """
    out_dir = Path(out_dir)
    documents = table_documents(config, inputs)
    written = []
    for document in documents:
        path = out_dir / document.file_name
        write_text_atomic(path, render(document, config))
        written.append(path)
    sections = [render(document, config, level=2) for document in documents]
    write_text_atomic(readme, f"# Results of preset `{config.get('preset')}`\n\n" + "\n".join(sections))
    return [*written, Path(readme)]
