"""The processes of a training run under Accelerate: DeepSpeed ZeRO-2 when asked, DDP (or one
process) otherwise, and the checks that every process set up the same run."""

from __future__ import annotations

import os

import torch

from phi3v.data.dataset import ConversationDataset
from phi3v.errors import UserError
from . import trackers
from .model_setup import deepspeed_config
from .optimizations import core_model
from .run_config import RunConfig


def single_process_rendezvous() -> None:
    """A process started without torchrun (one process: plain python) joins a group of one, the way
    DeepSpeed's docs run it in a notebook; without these variables DeepSpeed looks for MPI instead."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous of this one process
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def make_accelerator(run: RunConfig, accumulation: int, tracker_dir=None, *, find_unused_parameters: bool = False):
    """Accelerate around our own loop: DeepSpeed ZeRO-2 when asked, DDP (or one process) otherwise.

    `find_unused_parameters`: DDP searches the graph for parameters without a gradient after every
    backward; only where a micro-batch can leave some out (`ddp_finds_unused_parameters`)."""
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import DistributedDataParallelKwargs

    on_cpu = not torch.cuda.is_available()  # without it, torchrun on CPUs would run N lone copies

    if run.deepspeed:
        single_process_rendezvous()
        if on_cpu:  # Accelerate finds no backend for DeepSpeed without GPUs: name gloo
            import deepspeed
            from accelerate import PartialState

            deepspeed.init_distributed(dist_backend="gloo")
            PartialState(backend="gloo")
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(run, accumulation))
        return Accelerator(deepspeed_plugin=plugin, mixed_precision=run.precision,
                           gradient_accumulation_steps=accumulation, step_scheduler_with_optimizer=False,
                           **trackers.accelerator_options(run, tracker_dir))
    # Precision is ours (autocast + GradScaler): Accelerate would run fp16 on a CPU as plain fp32.
    return Accelerator(mixed_precision="no", gradient_accumulation_steps=accumulation, cpu=on_cpu,
                       step_scheduler_with_optimizer=False,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
                       **trackers.accelerator_options(run, tracker_dir))


def ddp_finds_unused_parameters(model, dataset: ConversationDataset) -> bool:
    """True when a micro-batch can leave trained parameters without a gradient: a sample without
    images while the vision tower trains. Nothing else goes unused (the CLIP layers after the
    feature layer are dropped), so DDP skips its per-step search of the graph otherwise."""
    vision_trains = any(p.requires_grad for p in core_model(model).model.vision_embed_tokens.parameters())
    return vision_trains and any(not record.image_paths for record in dataset.records)


def check_processes(accelerator, run: RunConfig, world_size: int) -> bool:
    """Accelerate set up what the run asks on the processes torchrun started; True under DeepSpeed."""
    from accelerate.utils import DistributedType

    uses_deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if uses_deepspeed != run.deepspeed or accelerator.num_processes != world_size:
        raise UserError(f"run {run.run!r}: asked for deepspeed={run.deepspeed} on {world_size} "
                        f"process(es) but Accelerate set up {accelerator.distributed_type} on "
                        f"{accelerator.num_processes} — launch with torchrun, or set deepspeed: false")
    return uses_deepspeed


def check_same_fit(accelerator, run: RunConfig) -> None:
    """Every process must have probed the same micro-batch plan, or their steps would not line up."""
    chosen = torch.tensor([[run.per_device_batch_size, run.checkpointed_layers]], device=accelerator.device)
    every = accelerator.gather(chosen)
    if (every != chosen).any():
        raise UserError(f"run {run.run!r}: the memory probe chose different (per-device batch, checkpointed "
                        f"layers) on different processes: {every.tolist()} — set per_device_batch_size and "
                        "checkpointed_layers yourself instead of memory_budget_gib")
