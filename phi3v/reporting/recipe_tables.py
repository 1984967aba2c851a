"""The recipe's published tables as data: columns, row order, reference values and number formats.

Each table is kept as the recipe prints it (header line, `---` separator, rows); the rows are parsed
once into cells and into the settings they describe, so the regenerated tables can reproduce the
recipe's columns exactly and match each row to a run of the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECK_MARK = "&#x2714;"

# The recipe's names of the training methods -> the strategies of this project.
STRATEGY_OF_METHOD = {
    "full-finetuning": "full",
    "frozen image model": "frozen_vision",
    "LoRA": "lora",
    "QLoRA": "qlora",
}
METHOD_OF_STRATEGY = {strategy: method for method, strategy in STRATEGY_OF_METHOD.items()}

NLVR2_TEXT = """\
Training method | Frozen vision model | data type | LoRA rank | LoRA alpha | batch size | learning rate | epochs | Accuracy
--- | --- | --- | --- | --- | --- | --- | --- | --- |
full-finetuning |  |bf16 | - | - | 64 | 1e-5 | 3 | 89.40 |
full-finetuning | &#x2714; |bf16 | - | - | 64 | 2e-5 | 2 | 89.20 |
LoRA results comming soon |  |  |  |  |  |  |  |  |
"""

DOCVQA_TEXT = """\
Training method | data type | LoRA rank | LoRA alpha | batch size | learning rate | epochs | ANLS
--- | --- | --- | --- | --- | --- | --- | --- |
full-finetuning | bf16 | - | - | 64 | 5e-6 | 2 | 83.65 |
full-finetuning | fp16 | - | - | 64 | 5e-6 | 2 | 82.60 |
frozen image model| bf16 | - | - | 64 | 1e-4 | 2 | 79.19 |
frozen image model| fp16 | - | - | 64 | 1e-4 | 2 | 78.74 |
LoRA | bf16 | 32 | 16 | 64 | 2e-4 | 2 | 82.46 |
LoRA | fp16 | 32 | 16 | 64 | 2e-4 | 2 | 82.34 |
QLoRA | bf16 | 32 | 16 | 64 | 2e-4 | 2 | 81.85 |
QLoRA | fp16 | 32 | 16 | 64 | 2e-4 | 2 | 81.85 |
"""

HATEFUL_MEMES_TEXT = """\
Training method | data type | LoRA rank | LoRA alpha | batch size | learning rate | epochs | Accuracy
--- | --- | --- | --- | --- | --- | --- | --- |
full-finetuning | bf16 | - | - | 64 | 5e-5 | 2 | 86.4 |
full-finetuning | fp16 | - | - | 64 | 5e-5 | 2 | 85.4 |
frozen image model| bf16 | - | - | 64 | 1e-4 | 3 | 79.4 |
frozen image model| fp16 | - | - | 64 | 1e-4 | 3 | 78.6 |
LoRA | bf16 | 128 | 256 | 64 | 2e-4 | 2 | 86.6 |
LoRA | fp16 | 128 | 256 | 64 | 2e-4 | 2 | 85.2 |
QLoRA | bf16 | 128 | 256 | 64 | 2e-4 | 2 | 84.0 |
QLoRA | fp16 | 128 | 256 | 64 | 2e-4 | 2 | 83.8 |
"""

SPEED_A100_TEXT = """\
Training method | \\# nodes | GPUs | flash attention | Effective batch size | Throughput (img/s) | Speedup | Peak GPU mem (GB)
--- | --- | --- | --- | --- | --- | --- | --- |
full-finetuning | 1 | 8 |  | 64 | 5.041 |  1x | ~42
full-finetuning | 1 | 8 | &#x2714; | 64 | 8.657 | 1.72x | ~36
full-finetuning | 2 | 16 | &#x2714; | 64 | 16.903 | 3.35x | ~29
full-finetuning | 4 | 32 | &#x2714; | 64 | 33.433 | 6.63x | ~26
frozen image model | 1 | 8 |  | 64 | 17.578 | 3.49x | ~29
frozen image model | 1 | 8 | &#x2714; | 64 | 31.736 | 6.30x | ~27
LoRA | 1 | 8 |  | 64 | 5.591 | 1.11x | ~50
LoRA | 1 | 8 | &#x2714; | 64 | 12.127 | 2.41x | ~16
QLoRA | 1 | 8 |  | 64 | 4.831 | 0.96x | ~32
QLoRA | 1 | 8 | &#x2714; | 64 | 10.545 | 2.09x | ~10
"""

SPEED_V100_TEXT = """\
Training method | \\# nodes | GPUs | flash attention | Effective batch size | Throughput (img/s) | Speedup | Peak GPU mem (GB)
--- | --- | --- | --- | --- | --- | --- | --- |
full-finetuning | 1 | 8 | | 64 | 2.462 |  1x | ~32
full-finetuning | 2 | 16 |  | 64 | 4.182 | 1.70x | ~32
full-finetuning | 4 | 32 |  | 64 | 5.465 | 2.22x | ~32
frozen image model | 1 | 8 |  | 64 | 8.942 | 3.63x | ~27
LoRA | 1 | 8 |  | 64 | 2.807 | 1.14x | ~30
"""


def split_cells(line: str) -> list[str]:
    """Cells of a markdown table line, stripped; a trailing `|` adds no cell."""
    cells = [cell.strip() for cell in line.split("|")]
    return cells[:-1] if line.rstrip().endswith("|") else cells


def decimals_of(number: str) -> int:
    """Digits after the decimal point of a number as printed (`86.4` -> 1, `89.40` -> 2)."""
    return len(number.split(".")[1]) if "." in number else 0


@dataclass(frozen=True)
class AccuracyRow:
    """One row of an accuracy table: the printed cells and the settings they describe."""

    cells: tuple[str, ...]
    strategy: str | None  # None for rows that describe no run ("LoRA results comming soon")
    precision: str | None
    lora_rank: int | None
    lora_alpha: int | None
    batch_size: int | None
    learning_rate: float | None
    epochs: int | None
    reference: str | None  # the metric as printed, e.g. "89.40"


@dataclass(frozen=True)
class AccuracyTable:
    """One of the recipe's accuracy tables (NLVR2, DocVQA, Hateful Memes)."""

    dataset: str
    file_name: str
    title: str
    header: str
    separator: str
    columns: tuple[str, ...]
    rows: tuple[AccuracyRow, ...]

    @property
    def metric_column(self) -> int:
        return len(self.columns) - 1

    @property
    def decimals(self) -> int:
        return max(decimals_of(row.reference) for row in self.rows if row.reference)


@dataclass(frozen=True)
class SpeedRow:
    """One row of a speed table."""

    cells: tuple[str, ...]
    strategy: str
    nodes: int
    gpus: int
    flash_attention: bool
    effective_batch: int
    img_per_s: str
    speedup: str
    peak_mem_gb: str


@dataclass(frozen=True)
class SpeedTable:
    """One of the recipe's speed tables (8x A100-80GB in bf16, 8x V100-32GB in fp16)."""

    name: str
    title: str
    hardware: str  # short name for the reference columns, e.g. "A100"
    precision: str
    header: str
    separator: str
    columns: tuple[str, ...]
    rows: tuple[SpeedRow, ...]


def _optional_int(cell: str) -> int | None:
    return None if cell in ("", "-") else int(cell)


def _optional_float(cell: str) -> float | None:
    return None if cell in ("", "-") else float(cell)


def _accuracy_row(columns: list[str], cells: list[str]) -> AccuracyRow:
    by_name = dict(zip(columns, cells))
    method = by_name["Training method"]
    strategy = STRATEGY_OF_METHOD.get(method)
    # NLVR2 marks a frozen vision model in its own column instead of naming the method.
    if strategy == "full" and by_name.get("Frozen vision model") == CHECK_MARK:
        strategy = "frozen_vision"
    return AccuracyRow(
        cells=tuple(cells),
        strategy=strategy,
        precision=by_name["data type"] or None,
        lora_rank=_optional_int(by_name["LoRA rank"]),
        lora_alpha=_optional_int(by_name["LoRA alpha"]),
        batch_size=_optional_int(by_name["batch size"]),
        learning_rate=_optional_float(by_name["learning rate"]),
        epochs=_optional_int(by_name["epochs"]),
        reference=cells[-1] or None,
    )


def parse_accuracy_table(dataset: str, file_name: str, title: str, text: str) -> AccuracyTable:
    header, separator, *lines = text.splitlines()
    columns = split_cells(header)
    rows = []
    for line in lines:
        cells = split_cells(line)
        assert len(cells) == len(columns), f"{title}: {line!r} has {len(cells)} cells"
        rows.append(_accuracy_row(columns, cells))
    return AccuracyTable(dataset, file_name, title, header, separator, tuple(columns), tuple(rows))


def parse_speed_table(name: str, title: str, hardware: str, precision: str, text: str) -> SpeedTable:
    header, separator, *lines = text.splitlines()
    columns = split_cells(header)
    rows = []
    for line in lines:
        cells = split_cells(line)
        assert len(cells) == len(columns), f"{title}: {line!r} has {len(cells)} cells"
        method, nodes, gpus, flash, batch, img_per_s, speedup, memory = cells
        rows.append(SpeedRow(
            cells=tuple(cells),
            strategy=STRATEGY_OF_METHOD[method],
            nodes=int(nodes),
            gpus=int(gpus),
            flash_attention=flash == CHECK_MARK,
            effective_batch=int(batch),
            img_per_s=img_per_s,
            speedup=speedup,
            peak_mem_gb=memory,
        ))
    return SpeedTable(name, title, hardware, precision, header, separator, tuple(columns), tuple(rows))


NLVR2 = parse_accuracy_table("nlvr2", "nlvr2.md", "NLVR2", NLVR2_TEXT)
DOCVQA = parse_accuracy_table("docvqa", "docvqa.md", "DocVQA (NOTE: Phi-3-vision)", DOCVQA_TEXT)
HATEFUL_MEMES = parse_accuracy_table(
    "hateful_memes", "hateful_memes.md", "Hateful memes (NOTE: Phi-3-vision)", HATEFUL_MEMES_TEXT
)
ACCURACY_TABLES = (NLVR2, DOCVQA, HATEFUL_MEMES)

# The model the recipe measured its DocVQA, Hateful Memes and speed tables with ("NOTE: Phi-3-vision").
RECIPE_TABLE_MODEL = "microsoft/Phi-3-vision-128k-instruct"

SPEED_A100 = parse_speed_table("a100", "8x A100-80GB (Ampere)", "A100", "bf16", SPEED_A100_TEXT)
SPEED_V100 = parse_speed_table("v100", "8x V100-32GB (Volta)", "V100", "fp16", SPEED_V100_TEXT)
SPEED_TABLES = (SPEED_A100, SPEED_V100)

# Shape of the speed measurements, as the recipe states it above its speed tables.
SPEED_NOTE = (
    "Speed benchmarking is done on the DocVQA dataset. The average sequence length for this dataset "
    "is 2443.23 tokens (num_crops=16 for the image model)."
)
