"""The memory plan of a resolved configuration: every training run and speed row on the configured GPUs
(`phi3v plan`), and the refusal at `snakemake -n` of a run that cannot fit (`check_memory`).
The arithmetic is `phi3v.training.memory_plan`'s; this module only says which runs, on how many GPUs."""

from __future__ import annotations

from phi3v.errors import UserError
from phi3v.model_sizes import ModelSizes
from phi3v.training.memory_plan import IMAGES_PER_SAMPLE, PlanRow, SampleShape, plan_row
from phi3v.training.run_config import RunConfig
from phi3v.workflow import settings
from phi3v.workflow import resources


def model_sizes(config: dict) -> ModelSizes:
    """The shapes the runs train: the release's for hub models, the demo's tiny model otherwise."""
    if config["model"]["source"] == "hub":
        return ModelSizes.release()  # Phi-3-vision-128k (a dataset's own model) has the same shapes
    from phi3v.configuration_phi3v import Phi3VConfig  # imports transformers: only for the demo's model

    return ModelSizes.from_config(Phi3VConfig.tiny(vocab_size=config["pretrain"]["vocab_size"]).to_dict())


def sample_shape(config: dict, sizes: ModelSizes, dataset: str, num_crops: int) -> SampleShape:
    task = config["datasets"][dataset].get("task", dataset)
    return SampleShape.of(sizes, num_crops, IMAGES_PER_SAMPLE.get(task, 1))


def plan_rows(config: dict, card_gib: float) -> list[PlanRow]:
    """Every active training run and speed row of `config` on its GPUs (`hardware`; a speed row: its `gpus`)."""
    sizes = model_sizes(config)
    nodes, _, gpus_per_node = resources.training_processes(config)
    gpus_per_node = max(gpus_per_node, 1)
    rows = []
    for entry in settings.active_runs(config):
        run = settings.run_config(config, entry["dataset"], entry["run"])
        rows.append(plan_row(f"{run.dataset}/{run.run}", sizes, run, sample_shape(config, sizes, run.dataset, run.num_crops),
                             nodes * gpus_per_node, card_gib, gpus_per_node))
    for row in settings.active_speed_rows(config):
        run = RunConfig.from_dict(row["run_config"])
        rows.append(plan_row(f"speed/{row['row']}", sizes, run, sample_shape(config, sizes, run.dataset, run.num_crops),
                             row["gpus"], card_gib, gpus_per_node))
    return rows


def card_memory_gib(config: dict, local_cards_gib: list[float]) -> float | None:
    """GiB of one GPU: `hardware.gpu_memory_gib`, else the smallest card of this machine (None: unknown)."""
    given = config["hardware"].get("gpu_memory_gib")
    if given is not None:
        return float(given)
    return min(local_cards_gib) if local_cards_gib else None


def check_memory(config: dict, card_gib: float) -> None:
    """Refuse the runs and speed rows that cannot fit on cards of `card_gib` GiB, each with its fix."""
    if config["hardware"]["accelerator"] != "cuda" or config["model"]["source"] != "hub":
        return  # CPU memory is not planned; the demo's tiny model fits any card
    too_big = [row for row in plan_rows(config, card_gib) if not row.fits]
    if too_big:
        lines = "\n  ".join(row.line(card_gib) for row in too_big)
        raise UserError(f"{len(too_big)} run(s) cannot fit on {card_gib:.4g} GiB GPUs (`phi3v plan` shows the "
                        f"whole table):\n  {lines}\n  Apply each fix to that run's entry (`run_overrides`: every "
                        "run; `hardware`: the GPUs), leave the run out with `runs_filter`, or set "
                        "`hardware.gpu_memory_gib` if the cards are larger")
