"""The training loop: set up a run, resume it, train `total_steps` optimiser steps, measure.

Loss of an optimiser step (`RunConfig.loss_reduction`), over the whole effective batch (all
micro-batches of all processes), so padding, packing, accumulation or the process count never change
it: `sample_mean` (the recipe's) is the mean over samples of each sample's own token mean;
`token_mean` is the mean over all supervised tokens. Which samples a step takes: `data_order`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from phi3v.data.collate import effective_batch_plan
from phi3v.data.dataset import ConversationDataset
from phi3v.processing_phi3v import IGNORE_INDEX
from . import trackers
from .checkpoint import keep_only_trainable_tensors, load_checkpoint, resume_point, save_checkpoint
from .data_order import collate_for, make_loader, step_plan, training_set, training_split
from .devices import local_device, to_device
from .distributed import check_processes, check_same_fit, ddp_finds_unused_parameters, make_accelerator
from .fingerprint import run_fingerprint
from .measurements import Throughput, batch_counts, dtype_name, mfu_entry, peak_memory_gib
from .memory_fit import MicroBatchFit, fit_micro_batches
from .model_setup import build_model, check_run, parameter_counts
from .optimizations import apply_optimizations, check_optimizations, settings_of
from .optimizer import linear_schedule_with_warmup, make_optimizer
from .run_config import RunConfig


@dataclass
class FitResult:
    model: torch.nn.Module  # as prepared by Accelerate (DDP/DeepSpeed wrapper, or the model itself)
    accelerator: object
    log: list
    metrics: dict
    timed: Throughput
    run: RunConfig  # as trained: a memory fit's per-device batch and checkpointed layers filled in


@dataclass
class Training:
    """What the loop runs with, as `set_up` prepared it."""

    run: RunConfig  # as trained (a memory fit filled in)
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 without DeepSpeed
    autocast_dtype: torch.dtype | None  # None under DeepSpeed, which casts the weights instead
    input_dtype: torch.dtype | None  # the pixels' dtype under DeepSpeed (no autocast)
    uses_deepspeed: bool
    dataset: ConversationDataset
    pad_token_id: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    fingerprint: dict
    micro_fit: MicroBatchFit | None
    params: tuple[int, int]  # (trainable, total)


def fit(run: RunConfig, *, base_model, data_dir, dataset_name: str, checkpoint_dir, tracker_dir=None,
        progress: bool = True) -> FitResult:
    """The training loop: set up, resume, train `total_steps` optimiser steps, measure."""
    checkpoint_dir = Path(checkpoint_dir)
    setup = set_up(run, base_model=base_model, data_dir=Path(data_dir), dataset_name=dataset_name,
                   tracker_dir=tracker_dir)
    run, accelerator, total_steps = setup.run, setup.accelerator, setup.total_steps
    start_step, log = 0, []
    resume_from = resume_point(accelerator, checkpoint_dir, setup.fingerprint, run.run)
    if resume_from is not None:
        trainer_state = load_checkpoint(accelerator, resume_from)
        start_step, log = trainer_state["step"], trainer_state["log"]

    batches = iter(make_loader(setup.dataset, run, start=start_step, total=total_steps,
                               accumulation=setup.accumulation, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, pad_token_id=setup.pad_token_id))
    setup.model.train()
    wall_start = time.perf_counter()
    timed = Throughput()
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc=run.run)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(setup.accumulation)]  # kept on the host until their turn
        loss, lr = optimizer_step(setup, micro)
        images, crops, tokens = accelerator.reduce(
            sum(batch_counts(b) for b in micro).to(accelerator.device), "sum").tolist()
        seconds = time.perf_counter() - t0
        if step > start_step or total_steps - start_step == 1:  # the first step warms up kernels
            timed.add(images, crops, tokens, seconds)
        log.append({"step": step + 1, "epoch": round((step + 1) / setup.steps_per_epoch, 4), "loss": loss,
                    "lr": lr, "tokens": int(tokens), "img_per_s": images / seconds, "step_s": seconds})
        trackers.log_step(accelerator, run, log[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if run.checkpoint_every and (step + 1) % run.checkpoint_every == 0 and step + 1 < total_steps:
            save_checkpoint(accelerator, checkpoint_dir, step + 1, {"step": step + 1, "log": log}, setup.fingerprint)
    bar.close()

    metrics = fit_metrics(setup, log, timed, wall_s=time.perf_counter() - wall_start)
    accelerator.wait_for_everyone()
    return FitResult(setup.model, accelerator, log, metrics, timed, run)


def optimizer_step(setup: Training, micro: list[dict]) -> tuple[float, float]:
    """One optimiser step over this process's micro-batches: (the step's loss, its learning rate)."""
    accelerator, model, scaler = setup.accelerator, setup.model, setup.scaler
    # every process needs the effective batch's token (or sample) count before its first backward
    window_items = accelerator.reduce(
        sum(loss_items(b, setup.run.loss_reduction) for b in micro).to(accelerator.device), "sum")
    step_loss = torch.zeros((), device=accelerator.device)
    autocast = (torch.autocast(accelerator.device.type, dtype=setup.autocast_dtype) if setup.autocast_dtype
                else contextlib.nullcontext())
    for batch in micro:
        batch = to_device(batch, accelerator.device, setup.input_dtype)
        with accelerator.accumulate(model):
            with autocast:
                # loss = this micro-batch's token-loss (or sample-mean) sum / the effective batch's count
                loss = model(**batch, num_items_in_batch=window_items, loss_reduction=setup.run.loss_reduction).loss
            # Accelerate/DeepSpeed divide by `accumulation`, DDP averages over processes: undo both
            scaled = loss * (setup.accumulation * accelerator.num_processes)
            accelerator.backward(scaler.scale(scaled) if scaler else scaled)
            step_loss += loss.detach()
    if scaler:
        scaler.unscale_(setup.optimizer)
    accelerator.clip_grad_norm_(model.parameters(), setup.run.max_grad_norm)
    lr = setup.scheduler.get_last_lr()[0]
    if scaler:
        scaler.step(setup.optimizer)
        scaler.update()
    else:
        setup.optimizer.step()
    setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(step_loss, "sum").item(), lr


def set_up(run: RunConfig, *, base_model, data_dir: Path, dataset_name: str, tracker_dir=None) -> Training:
    """Check the run, load the data and the model, fit the micro-batches to memory when asked, and
    prepare model, optimiser and schedule on the processes."""
    from accelerate.utils import set_seed

    from phi3v.processing_phi3v import Phi3VProcessor, check_compatible

    device = local_device()  # GPU LOCAL_RANK, current from here on, before anything touches CUDA
    check_run(run, device)
    check_optimizations(run, device)
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    effective_batch_plan(run.batch_size, run.per_device_batch_size, world_size)  # refuse early
    processor = Phi3VProcessor.from_pretrained(base_model)
    train_jsonl = training_split(data_dir, dataset_name)
    dataset = training_set(run, train_jsonl, processor)
    steps_per_epoch, total_steps = step_plan(len(dataset), run, train_jsonl)
    fingerprint = run_fingerprint(run, base_model=base_model, train_jsonl=train_jsonl, processes=world_size)

    set_seed(run.seed)  # same LoRA init and data order on every process
    model = build_model(run, str(base_model), device)
    check_compatible(model, processor, str(base_model))
    micro_fit = None
    if run.memory_budget_gib is not None:  # the per-device batch sets accumulation and DeepSpeed's config
        micro_fit = fit_micro_batches(model, run, dataset, collate_for(run, processor.pad_token_id),
                                      device, world_size)
        run = dataclasses.replace(run, per_device_batch_size=micro_fit.per_device_batch_size,
                                  checkpointed_layers=micro_fit.checkpointed_layers, memory_budget_gib=None)
    apply_optimizations(model, run)
    accumulation = effective_batch_plan(run.batch_size, run.per_device_batch_size, world_size)
    accelerator = make_accelerator(run, accumulation, tracker_dir,
                                   find_unused_parameters=ddp_finds_unused_parameters(model, dataset))
    uses_deepspeed = check_processes(accelerator, run, world_size)
    trackers.start(accelerator, run, tracker_dir)
    if micro_fit is not None:
        check_same_fit(accelerator, run)
    params = parameter_counts(model)
    optimizer = make_optimizer(model, run)
    scheduler = linear_schedule_with_warmup(optimizer, run.warmup_steps, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # fp16 without DeepSpeed: fp32 weights, fp16 autocast, loss scaling; bf16 needs no scaler
    autocast_dtype = None if uses_deepspeed else run.dtype
    scaler = (torch.amp.GradScaler(accelerator.device.type)
              if autocast_dtype == torch.float16 else None)
    if scaler is not None:
        accelerator.register_for_checkpointing(scaler)
    keep_only_trainable_tensors(accelerator)
    input_dtype = accelerator.unwrap_model(model).dtype if uses_deepspeed else None
    return Training(run=run, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, autocast_dtype=autocast_dtype, input_dtype=input_dtype,
                    uses_deepspeed=uses_deepspeed, dataset=dataset, pad_token_id=processor.pad_token_id,
                    accumulation=accumulation, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                    fingerprint=fingerprint, micro_fit=micro_fit, params=params)


def fit_metrics(setup: Training, log: list, timed: Throughput, wall_s: float) -> dict:
    """`metrics.json`: throughput, memory, MFU, what was trained and how."""
    accelerator, run, micro_fit = setup.accelerator, setup.run, setup.micro_fit
    return {
        "img_per_s": timed.per_second(timed.images),
        "tokens_per_s": timed.per_second(timed.tokens),
        "peak_mem_gib": peak_memory_gib(accelerator.device),
        **mfu_entry(run, accelerator.unwrap_model(setup.model).config, accelerator.device, timed,
                    accelerator.num_processes),
        "wall_s": wall_s,
        "steps": setup.total_steps,
        "final_loss": log[-1]["loss"] if log else None,
        "trainable_params": setup.params[0],
        "total_params": setup.params[1],
        "weights_dtype": dtype_name(setup.model, trainable=True),
        "frozen_weights_dtype": dtype_name(setup.model, trainable=False),
        "autocast_dtype": str(setup.autocast_dtype).removeprefix("torch.") if setup.autocast_dtype else None,
        "deepspeed": setup.uses_deepspeed,
        "processes": accelerator.num_processes,
        "accumulation_steps": setup.accumulation,
        "settings": settings_of(run),  # the speed-relevant settings used (the memory fit's choice)
        **({"memory_fit": micro_fit.as_dict()} if micro_fit else {}),
    }


def loss_items(batch: dict, loss_reduction: str) -> torch.Tensor:
    """What the loss averages over in a collated batch: supervised tokens (`token_mean`) or samples
    with at least one supervised token (`sample_mean`; packed rows hold several samples). Labels shift
    by one, so position 0 is never a target."""
    labels = batch["labels"]
    supervised = labels[:, 1:] != IGNORE_INDEX
    if loss_reduction == "token_mean":
        return supervised.sum()
    from phi3v.modeling_phi3v import sample_segments

    samples = sample_segments(labels, batch.get("position_ids"))[:, 1:][supervised].unique()
    return torch.tensor(samples.numel())
