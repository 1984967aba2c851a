"""Speed benchmark: the real training step of one speed-table row, timed at the dataset's shape.

The first `warmup` optimiser steps are excluded; img/s and tokens/s are the medians over the next
`steps` steps. `weights: random` needs no download: on a GPU the full-size model of the base
folder's config gets random weights (speed does not depend on weight values); on a CPU the tiny
base model is used as it is.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import torch

from phi3v.errors import UserError
from phi3v.files import write_json_atomic
from .run_config import OPTION_FIELDS, RunConfig, Strategy

WEIGHTS = ("random", "pretrained")
# run fields a speed row may set (this project's best settings); the recipe's rows set none
ROW_SETTINGS = ("per_device_batch_size", "gradient_checkpointing", "packing", *OPTION_FIELDS)


def speed_run(row: dict, *, dataset_name: str, num_crops: int, steps: int, warmup: int,
              lora_rank: int = 64) -> RunConfig:
    """The run config a speed row trains with: recipe settings, effective batch of the row."""
    strategy = Strategy(row["strategy"])
    rank = dict(lora_rank=lora_rank, lora_alpha=2 * lora_rank) if strategy.needs_rank else {}
    return RunConfig(
        dataset=dataset_name, run=f"speed-{row['row']}", strategy=strategy, precision=row["precision"],
        attention=row["attention"], learning_rate=1e-5, epochs=1, num_crops=num_crops,
        batch_size=row["effective_batch"], warmup_steps=0, max_steps=warmup + steps, **rank,
        # ZeRO-2 as the recipe's full fine-tuning, where torchrun launched GPU processes
        deepspeed=strategy.uses_deepspeed and torch.cuda.is_available() and "WORLD_SIZE" in os.environ,
        **{key: row[key] for key in ROW_SETTINGS if row.get(key) is not None},  # beyond the recipe
    )


def write_random_weights(base_model: Path, folder: Path) -> Path:
    """The base folder's config with random weights (bf16 on a GPU), plus its processor files.

    Only the config and tokenizer of `base_model` are read, so it may be a folder without weights.
    """
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.processing_phi3v import Phi3VProcessor

    config = Phi3VConfig.from_pretrained(base_model)
    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    model = Phi3VForCausalLM.random_init(config, device=device, dtype=dtype)
    model.save_pretrained(folder)
    Phi3VProcessor.from_pretrained(base_model).save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def nodes_used() -> int:
    """Machines this process group spans (torchrun's world size over its per-node size)."""
    return max(1, int(os.environ.get("WORLD_SIZE", 1)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def run_speed(row: dict, *, base_model, data_dir, dataset_name: str, num_crops: int, weights: str,
              steps: int, warmup: int, out_json) -> dict:
    """Measure one speed row and write `results/speed/<row>.json`; return what was written."""
    from phi3v import provenance
    from .train import fit, mfu_entry

    if weights not in WEIGHTS:
        raise UserError(f"speed.weights={weights!r} — choose one of {', '.join(WEIGHTS)}")
    if steps < 1 or warmup < 1:
        raise UserError(f"speed row {row['row']!r}: steps={steps} and warmup={warmup} must both be >= 1 "
                        "(the first step compiles and allocates)")
    run = speed_run(row, dataset_name=dataset_name, num_crops=num_crops, steps=steps, warmup=warmup)
    base_model = Path(base_model)
    with tempfile.TemporaryDirectory(prefix=".speed-", dir=Path(out_json).parent if Path(out_json).parent.exists()
                                     else None) as work:
        work = Path(work)
        model_dir = base_model
        if weights == "random":
            model_dir = write_random_weights(base_model, work / "model")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = fit(run, base_model=model_dir, data_dir=data_dir, dataset_name=dataset_name,
                     checkpoint_dir=work / "checkpoints")
    accelerator = result.accelerator
    timed = result.log[warmup:]
    step_s = statistics.median(entry["step_s"] for entry in timed)
    samples_per_s = run.batch_size / step_s
    images_per_sample = result.timed.images / max(1, result.timed.steps * run.batch_size)
    device = (torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)")
    speed = {
        "row": row["row"], "strategy": row["strategy"], "precision": row["precision"],
        # What was measured, not what the row asks for: on a CPU, one process and no GPU.
        "attention": row["attention"], "nodes": nodes_used(),
        "gpus": accelerator.num_processes if accelerator.device.type == "cuda" else 0,
        "effective_batch": run.batch_size,
        "img_per_s": samples_per_s * images_per_sample,
        "tokens_per_s": statistics.median(entry["tokens"] / entry["step_s"] for entry in timed),
        "peak_mem_gib": result.metrics["peak_mem_gib"],
        **mfu_entry(run, accelerator.unwrap_model(result.model).config, accelerator.device, result.timed,
                    accelerator.num_processes, samples_per_s=samples_per_s),
        "device": device, "processes": accelerator.num_processes, "weights": weights,
        "steps_measured": len(timed), "warmup_steps": warmup,
        "settings": result.metrics["settings"],
        **({"memory_fit": result.metrics["memory_fit"]} if "memory_fit" in result.metrics else {}),
        "git": provenance.git_state(), "hardware": provenance.hardware(),
    }
    if accelerator.is_main_process:
        write_json_atomic(out_json, speed)
    accelerator.end_training()
    return speed
