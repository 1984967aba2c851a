"""Speed benchmark: the real training step of one speed-table row, timed at the dataset's shape.

    python -m phi3v.launch --nodes N --processes-per-node P -- phi3v.training.speed \\
        --row-json ROW --base-model DIR --data-dir DIR --dataset NAME --num-crops C \\
        --weights random --steps S --warmup W --out results/speed/ROW.json

A row starts as training does (`phi3v.launch`: torchrun for several processes, srun + torchrun
across nodes) and trains with the recipe's settings: under DeepSpeed ZeRO-2 where the row says so
(the workflow sets it from the preset's `train.deepspeed` for full-parameter rows; over gloo on
CPUs). The first `warmup` optimiser steps are excluded; img/s and tokens/s are the medians over the next `steps` steps. The result
records what was measured (processes, nodes, GPUs, DeepSpeed), not what the row asks for.
`weights: random` needs no download: on a GPU the full-size model of the base folder's config gets
random weights (speed does not depend on weight values); on a CPU the tiny base model is used as it is.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import socket
import statistics
import sys
from pathlib import Path

import torch

from phi3v.errors import UserError, entry_point
from phi3v.files import atomic_output_dir, write_json_atomic
from .devices import local_device, local_rank
from .run_config import speed_run

WEIGHTS = ("random", "pretrained")


def write_random_weights(base_model: Path, folder: Path) -> Path:
    """The base folder's config with random weights (bf16 on a GPU), plus its processor files.

    Only the config and tokenizer of `base_model` are read, so it may be a folder without weights.
    """
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.processing_phi3v import Phi3VProcessor

    config = Phi3VConfig.from_pretrained(base_model)
    device = local_device()
    on_gpu = device.type == "cuda"
    model = Phi3VForCausalLM.random_init(config, device=device, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model.save_pretrained(folder)
    Phi3VProcessor.from_pretrained(base_model).save_pretrained(folder)
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return folder


def random_weights_once(base_model: Path, folder: Path) -> Path:
    """`write_random_weights` into `folder` by the first process of this host; the others wait on a
    file lock and load the same folder, so a node writes the model once, not once per process."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / "random-weights.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not folder.is_dir():
            with atomic_output_dir(folder) as partial:
                write_random_weights(base_model, partial)
    return folder


def work_dir(out_json: Path, row_id: str) -> Path:
    """Scratch space of one launch of a row on this host, shared by its processes there.

    torchrun gives every process of a launch the same run id (the SLURM job id across nodes); the
    host name keeps hosts apart, as file locks do not reach across a shared file system.
    """
    launch = os.environ.get("TORCHELASTIC_RUN_ID", str(os.getpid()))
    return out_json.parent / f".{row_id}.{socket.gethostname()}.{launch}"


def node_name() -> str:
    """The SLURM node this process runs on (several may share a host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def run_speed(row: dict, *, base_model, data_dir, dataset_name: str, num_crops: int, weights: str,
              steps: int, warmup: int, out_json) -> dict:
    """Measure one speed row and write `results/speed/<row>.json`; return what was written.

    Every process of the launch calls this (under torchrun); the main process writes the result.
    """
    from accelerate.utils import gather_object

    from phi3v import provenance
    from .loop import fit
    from .measurements import mfu_entry

    if weights not in WEIGHTS:
        raise UserError(f"speed.weights={weights!r} — choose one of {', '.join(WEIGHTS)}")
    if steps < 1 or warmup < 1:
        raise UserError(f"speed row {row['row']!r}: steps={steps} and warmup={warmup} must both be >= 1 "
                        "(the first step compiles and allocates)")
    run = speed_run(row, dataset_name=dataset_name, num_crops=num_crops, steps=steps, warmup=warmup)
    base_model, out_json = Path(base_model), Path(out_json)
    work = work_dir(out_json, row["row"])
    try:
        model_dir = random_weights_once(base_model, work / "model") if weights == "random" else base_model
        device = local_device()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # fit ends with a barrier: when it returns, every process has loaded the model
        result = fit(run, base_model=model_dir, data_dir=data_dir, dataset_name=dataset_name,
                     checkpoint_dir=work / "checkpoints")
    finally:
        if local_rank() == 0:
            shutil.rmtree(work, ignore_errors=True)
    accelerator = result.accelerator
    node_names = sorted(set(gather_object([node_name()])))  # one entry per process of the launch
    timed = result.log[warmup:]
    step_s = statistics.median(entry["step_s"] for entry in timed)
    samples_per_s = run.batch_size / step_s
    images_per_sample = result.timed.images / max(1, result.timed.steps * run.batch_size)
    device = (torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''})")
    speed = {
        "row": row["row"], "strategy": row["strategy"], "precision": row["precision"],
        # What was measured, not what the row asks for: e.g. on a CPU, no GPU.
        "attention": row["attention"], "nodes": len(node_names), "node_names": node_names,
        "processes": accelerator.num_processes,
        "gpus": accelerator.num_processes if accelerator.device.type == "cuda" else 0,
        "deepspeed": result.metrics["deepspeed"],
        "effective_batch": run.batch_size,
        "img_per_s": samples_per_s * images_per_sample,
        "tokens_per_s": statistics.median(entry["tokens"] / entry["step_s"] for entry in timed),
        # the input's length, to set beside the recipe's 2443.23 tokens a DocVQA sample
        "tokens_per_sample": sum(entry["tokens"] for entry in timed) / (len(timed) * run.batch_size),
        "peak_mem_gib": result.metrics["peak_mem_gib"],
        **mfu_entry(run, accelerator.unwrap_model(result.model).config, accelerator.device, result.timed,
                    accelerator.num_processes, samples_per_s=samples_per_s),
        "device": device, "weights": weights,
        "steps_measured": len(timed), "warmup_steps": warmup,
        "settings": result.metrics["settings"],
        **({"memory_fit": result.metrics["memory_fit"]} if "memory_fit" in result.metrics else {}),
        "git": provenance.git_state(), "hardware": provenance.hardware(),
    }
    if accelerator.is_main_process:
        write_json_atomic(out_json, speed)
    accelerator.end_training()
    return speed


# ---- command line ------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m phi3v.training.speed", description=__doc__.split("\n")[0])
    parser.add_argument("--row-json", required=True, help="the resolved speed row as JSON text")
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--num-crops", type=int, required=True)
    parser.add_argument("--weights", choices=WEIGHTS, default="random")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--out", required=True, help="the result JSON to write")
    return parser.parse_args(argv)


def read_row_json(text: str) -> dict:
    """`--row-json`: a resolved speed row (`row`, `strategy`, `precision`, `attention`, `effective_batch`,
    `deepspeed`)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--row-json: not JSON ({exc}): {text[:80]!r}") from None
    missing = [key for key in ("row", "strategy", "precision", "attention", "effective_batch", "deepspeed")
               if key not in row]
    if missing:
        raise UserError(f"--row-json: the speed row lacks {', '.join(missing)}; pass a row of the resolved config")
    return row


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    result = run_speed(read_row_json(args.row_json), base_model=args.base_model, data_dir=args.data_dir,
                       dataset_name=args.dataset, num_crops=args.num_crops, weights=args.weights,
                       steps=args.steps, warmup=args.warmup, out_json=args.out)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"result: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
