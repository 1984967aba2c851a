"""Speed benchmark: the real training step of one speed-table row, timed at the dataset's shape.

    python -m phi3v.launch --nodes N --processes-per-node P -- phi3v.training.speed \\
        --row ROW --run-json RUN --base-model DIR --data-dir DIR --weights random --warmup W \\
        --out results/speed/ROW.json

A row starts as training does (`phi3v.launch`: torchrun for several processes, srun + torchrun
across nodes) and trains the run config the workflow resolved for it (`--run-json`, as a training
run's: the recipe's settings, under DeepSpeed ZeRO-2 where the row says so, over gloo on CPUs; see
`phi3v.training.run_config.speed_run`). The first `warmup` of its `max_steps` optimiser steps are
excluded; img/s and tokens/s are the medians over the others. The result
records what was measured (processes, nodes, GPUs, DeepSpeed), not what the row asks for.
`weights: random` needs no download: the base folder's config (the full-size model on a GPU, in bf16;
the demo's tiny model on a CPU, in fp32) gets seeded random weights (speed does not depend on weight
values); `pretrained` trains the base folder's own weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
from pathlib import Path

import torch
from filelock import FileLock

from phi3v.errors import UserError, entry_point
from phi3v.files import atomic_output_dir, write_json_atomic
from .devices import local_device, local_rank
from .run_config import RunConfig, read_run_json

WEIGHTS = ("random", "pretrained")
RANDOM_WEIGHTS_SEED = 0


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
    torch.manual_seed(RANDOM_WEIGHTS_SEED)  # the same weights every time: a rerun's losses match too
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
    with FileLock(folder.parent / "random-weights.lock"):  # a flock: released also if this process dies
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


def run_speed(row: str, run: RunConfig, *, base_model, data_dir, weights: str, warmup: int, out_json) -> dict:
    """Measure speed row `row` (training `run`) and write `results/speed/<row>.json`; return what was written.

    Every process of the launch calls this (under torchrun); the main process writes the result.
    """
    from accelerate.utils import gather_object

    from phi3v import provenance
    from .loop import fit
    from .measurements import mfu_entry

    if weights not in WEIGHTS:
        raise UserError(f"speed.weights={weights!r} — choose one of {', '.join(WEIGHTS)}")
    steps = (run.max_steps or 0) - warmup
    if steps < 1 or warmup < 1:
        raise UserError(f"speed row {row!r}: steps={steps} and warmup={warmup} must both be >= 1 "
                        "(the first step compiles and allocates)")
    base_model, out_json = Path(base_model), Path(out_json)
    work = work_dir(out_json, row)
    try:
        model_dir = random_weights_once(base_model, work / "model") if weights == "random" else base_model
        device = local_device()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # fit ends with a barrier: when it returns, every process has loaded the model
        result = fit(run, base_model=model_dir, data_dir=data_dir, dataset_name=run.dataset,
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
        "row": row, "strategy": run.strategy.value, "precision": run.precision,
        # What was measured, not what the row asks for: e.g. on a CPU, no GPU.
        "attention": run.attention, "nodes": len(node_names), "node_names": node_names,
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
    parser.add_argument("--row", required=True, help="the speed row's id (names the result)")
    parser.add_argument("--run-json", required=True, help="the run config the row trains: JSON text or a .json file")
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--weights", choices=WEIGHTS, default="random")
    parser.add_argument("--warmup", type=int, required=True, help="the first steps, not measured")
    parser.add_argument("--out", required=True, help="the result JSON to write")
    return parser.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    result = run_speed(args.row, read_run_json(args.run_json), base_model=args.base_model, data_dir=args.data_dir,
                       weights=args.weights, warmup=args.warmup, out_json=args.out)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"result: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
