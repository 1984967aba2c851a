"""Fine-tune Phi-3.5-vision: every strategy, checkpoints, automatic resume, torchrun.

    torchrun --nproc_per_node=N -m phi3v.training.train --run-json RUN --base-model DIR --data-dir DIR \\
        --dataset NAME --out-dir DIR --checkpoint-dir DIR

Loss of an optimiser step (`RunConfig.loss_reduction`), over the whole effective batch (all
micro-batches of all processes), so padding, packing, accumulation or the process count never change
it: `sample_mean` (the recipe's) is the mean over samples of each sample's own token mean;
`token_mean` is the mean over all supervised tokens.
Data order: a permutation of the training set per epoch from (seed, epoch); optimiser step s takes
the next `batch_size` samples, each process its slice, as `accumulation` micro-batches of
`per_device_batch_size` samples (padded, or packed into one row). Resuming at step s therefore
only needs s: the data position is a pure function of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from phi3v.data.collate import collate_packed, collate_padded, effective_batch_plan
from phi3v.data.dataset import ConversationDataset
from phi3v.errors import UserError, entry_point
from phi3v.layout import ADAPTER, METRICS_FILE, MODEL, PROVENANCE, TRACKERS_DIR, TRAIN_LOG
from phi3v.files import atomic_output_dir, write_json_atomic, write_text_atomic
from phi3v.processing_phi3v import IGNORE_INDEX
from . import trackers
from .checkpoint import keep_only_trainable_tensors, load_checkpoint, resume_point, save_checkpoint
from .devices import local_device
from .fingerprint import run_fingerprint
from .memory_fit import fit_micro_batches
from .optimizations import apply_optimizations, check_optimizations, core_model, settings_of
from .run_config import RunConfig
from .model_setup import build_model, check_run, deepspeed_config, parameter_counts

# Encoded training samples a CPU run keeps in memory: the demo's largest set (UCF-101) is 145 MB;
# larger sets (num_crops 16) keep their first samples only, within a job's memory request.
EXAMPLE_CACHE_BYTES = 256 << 20


# ---- set-up ------------------------------------------------------------------------------------

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


def decay_parameter_names(model) -> set[str]:
    """Parameters that take weight decay, by the recipe's transformers (4.38-4.43): all but biases and
    nn.LayerNorm weights, so RMSNorm weights, CLIP's class_embedding and the separators are decayed."""
    from transformers.trainer_pt_utils import get_parameter_names

    return {name for name in get_parameter_names(model, [torch.nn.LayerNorm]) if "bias" not in name}


def make_optimizer(model, run: RunConfig) -> torch.optim.Optimizer:
    """The recipe's AdamW with the recipe's weight-decay groups (`decay_parameter_names`)."""
    decayed = decay_parameter_names(model)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for name, p in params if name in decayed], "weight_decay": run.weight_decay},
              {"params": [p for name, p in params if name not in decayed], "weight_decay": 0.0}]
    # an empty group (frozen_vision trains no bias or LayerNorm) would be dropped by DeepSpeed, not by the scheduler
    groups = [group for group in groups if group["params"]]
    return torch.optim.AdamW(groups, lr=run.learning_rate, betas=(0.9, 0.95), eps=1e-7,
                             **adamw_kernel([p for _, p in params]))


def linear_schedule_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
                                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' `get_linear_schedule_with_warmup`, the same floats: its module imports peft and
    bitsandbytes (~2 s of CPU a job), which a full or frozen-vision run does not otherwise load."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw_kernel(params) -> dict:
    """AdamW's implementation: the fused kernel (one launch for every tensor) on CUDA; elsewhere foreach,
    the same bits as torch's CPU default (a Python loop over the tensors, ~4 ms a step for the demo's)."""
    return {"fused": True} if params and all(p.is_cuda for p in params) else {"foreach": True}


def ddp_finds_unused_parameters(model, dataset: ConversationDataset) -> bool:
    """True when a micro-batch can leave trained parameters without a gradient: a sample without
    images while the vision tower trains. Nothing else goes unused (the CLIP layers after the
    feature layer are dropped), so DDP skips its per-step search of the graph otherwise."""
    vision_trains = any(p.requires_grad for p in core_model(model).model.vision_embed_tokens.parameters())
    return vision_trains and any(not record.image_paths for record in dataset.records)


def step_plan(num_samples: int, run: RunConfig, train_jsonl: Path) -> tuple[int, int]:
    """(optimiser steps per epoch, total optimiser steps); an incomplete last batch is dropped."""
    if num_samples == 0:
        raise UserError(f"{train_jsonl} holds no records: the training split is empty — write the training "
                        "records into it (a custom dataset), or delete it and rerun the workflow to convert the "
                        "dataset again")
    steps_per_epoch = num_samples // run.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"run {run.run!r}: the training split {train_jsonl} has {num_samples} samples, fewer than "
                        f"batch_size={run.batch_size} — lower batch_size or raise max_train_samples")
    total = run.max_steps if run.max_steps is not None else run.epochs * steps_per_epoch
    return steps_per_epoch, total


def micro_batches(step: int, *, num_samples: int, run: RunConfig, accumulation: int, rank: int,
                  world_size: int) -> list[list[int]]:
    """Sample indices of this process's micro-batches for optimiser step `step`."""
    batch, per_device = run.batch_size, run.per_device_batch_size
    epoch, index = divmod(step, num_samples // batch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(run.seed + epoch))
    window = order[index * batch:(index + 1) * batch].tolist()
    share = window[rank * per_device * accumulation:(rank + 1) * per_device * accumulation]
    return [share[i * per_device:(i + 1) * per_device] for i in range(accumulation)]


def make_loader(dataset, run: RunConfig, *, start: int, total: int, accumulation: int, rank: int,
                world_size: int, pad_token_id: int) -> DataLoader:
    """Micro-batches of steps start..total-1 for this process, decoded ahead by worker processes.

    Samples are keyed `(index, epoch)`: a dataset that draws per visit (train_turns one_random)
    seeds its draw with them, so the draw too is a pure function of the step."""
    steps_per_epoch = len(dataset) // run.batch_size
    batches = [[(index, step // steps_per_epoch) for index in b] for step in range(start, total)
               for b in micro_batches(step, num_samples=len(dataset), run=run, accumulation=accumulation,
                                      rank=rank, world_size=world_size)]
    collate = collate_for(run, pad_token_id)
    workers = min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0
    # Its own generator: starting the iterator (workers' seeds) must not draw from the global RNG,
    # which a resumed run has just restored for dropout. The data itself draws nothing at random.
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(run.seed))


def collate_for(run: RunConfig, pad_token_id: int):
    """One row per micro-batch without padding (packing; under flash attention with the varlen
    kernel's sample boundaries), or a padded (B, T) batch."""
    if run.packing:
        return functools.partial(collate_packed, flash_attention=run.attention == "flash_attention_2")
    return functools.partial(collate_padded, pad_token_id=pad_token_id, mask_pad_id=run.attention_mask == "pad_id")


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Tokens the loss counts: labels shift by one, so position 0 is never a target."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def loss_items(batch: dict, loss_reduction: str) -> torch.Tensor:
    """What the loss averages over in a collated batch: supervised tokens (`token_mean`) or samples
    with at least one supervised token (`sample_mean`; packed rows hold several samples)."""
    if loss_reduction == "token_mean":
        return supervised_tokens(batch["labels"])
    from phi3v.modeling_phi3v import sample_segments

    labels = batch["labels"]
    supervised = labels[:, 1:] != IGNORE_INDEX
    samples = sample_segments(labels, batch.get("position_ids"))[:, 1:][supervised].unique()
    return torch.tensor(samples.numel())


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---- the loop ----------------------------------------------------------------------------------

def train(run: RunConfig, *, base_model, data_dir, dataset_name: str, out_dir, checkpoint_dir,
          progress: bool = True) -> dict:
    """Train one run; resume from the newest checkpoint if any; write model/adapter, logs, metrics."""
    result = fit(run, base_model=base_model, data_dir=data_dir, dataset_name=dataset_name,
                 checkpoint_dir=checkpoint_dir, tracker_dir=Path(out_dir) / TRACKERS_DIR, progress=progress)
    accelerator = result.accelerator
    model = accelerator.unwrap_model(result.model)
    # The process group ends before the main process writes (a LoRA merge of the full model takes
    # minutes): no process waits in a barrier that could time out; the launcher waits for all.
    accelerator.end_training()
    if accelerator.is_main_process:
        write_outputs(model, run, base_model=Path(base_model), data_dir=Path(data_dir), out_dir=Path(out_dir),
                      log=result.log, metrics=result.metrics)
    return result.metrics


@dataclass
class FitResult:
    model: torch.nn.Module  # as prepared by Accelerate (DDP/DeepSpeed wrapper, or the model itself)
    accelerator: object
    log: list
    metrics: dict
    timed: "Throughput"
    run: RunConfig  # as trained: a memory fit's per-device batch and checkpointed layers filled in


def fit(run: RunConfig, *, base_model, data_dir, dataset_name: str, checkpoint_dir, tracker_dir=None,
        progress: bool = True) -> FitResult:
    """The training loop: set up, resume, train `total_steps` optimiser steps, measure."""
    from accelerate.utils import DistributedType, set_seed

    from phi3v.processing_phi3v import Phi3VProcessor, check_compatible

    data_dir, checkpoint_dir = Path(data_dir), Path(checkpoint_dir)
    device = local_device()  # GPU LOCAL_RANK, current from here on, before anything touches CUDA
    check_run(run, device)
    check_optimizations(run, device)
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    effective_batch_plan(run.batch_size, run.per_device_batch_size, world_size)  # refuse early
    processor = Phi3VProcessor.from_pretrained(base_model)
    train_jsonl = data_dir / f"{dataset_name}_train.jsonl"
    if not train_jsonl.is_file():
        raise UserError(f"{train_jsonl} does not exist — build the dataset {dataset_name!r} first")
    # Without GPUs this process decodes every sample itself (make_loader): once, then from memory.
    cache_bytes = 0 if torch.cuda.is_available() else EXAMPLE_CACHE_BYTES
    dataset = ConversationDataset(train_jsonl, data_dir / "images", processor, run.num_crops,
                                  run.max_train_samples, train_turns=run.train_turns, seed=run.seed,
                                  cache_bytes=cache_bytes)
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
    uses_deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if uses_deepspeed != run.deepspeed or accelerator.num_processes != world_size:
        raise UserError(f"run {run.run!r}: asked for deepspeed={run.deepspeed} on {world_size} "
                        f"process(es) but Accelerate set up {accelerator.distributed_type} on "
                        f"{accelerator.num_processes} — launch with torchrun, or set deepspeed: false")
    trackers.start(accelerator, run, tracker_dir)
    if micro_fit is not None:
        check_same_fit(accelerator, run)
    trainable_params, total_params = parameter_counts(model)
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

    start_step, log = 0, []
    resume_from = resume_point(accelerator, checkpoint_dir, fingerprint, run.run)
    if resume_from is not None:
        trainer_state = load_checkpoint(accelerator, resume_from)
        start_step, log = trainer_state["step"], trainer_state["log"]

    loader = make_loader(dataset, run, start=start_step, total=total_steps, accumulation=accumulation,
                         rank=accelerator.process_index, world_size=accelerator.num_processes,
                         pad_token_id=processor.pad_token_id)
    batches = iter(loader)
    input_dtype = accelerator.unwrap_model(model).dtype if uses_deepspeed else None
    autocast = (torch.autocast(accelerator.device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    model.train()
    wall_start = time.perf_counter()
    timed = Throughput()
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc=run.run)
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(accumulation)]  # kept on the host until their turn
        # every process needs the effective batch's token (or sample) count before its first backward
        window_items = accelerator.reduce(
            sum(loss_items(b, run.loss_reduction) for b in micro).to(accelerator.device), "sum")
        step_loss = torch.zeros((), device=accelerator.device)
        for batch in micro:
            batch = to_device(batch, accelerator.device, input_dtype)
            with accelerator.accumulate(model):
                with autocast:
                    # loss = this micro-batch's token-loss (or sample-mean) sum / the effective batch's count
                    loss = model(**batch, num_items_in_batch=window_items, loss_reduction=run.loss_reduction).loss
                # Accelerate/DeepSpeed divide by `accumulation`, DDP averages over processes: undo both
                scaled = loss * (accumulation * accelerator.num_processes)
                accelerator.backward(scaler.scale(scaled) if scaler else scaled)
                step_loss += loss.detach()
        if scaler:
            scaler.unscale_(optimizer)
        accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss = accelerator.reduce(step_loss, "sum").item()
        images, crops, tokens = accelerator.reduce(
            sum(batch_counts(b) for b in micro).to(accelerator.device), "sum").tolist()
        seconds = time.perf_counter() - t0
        if step > start_step or total_steps - start_step == 1:  # the first step warms up kernels
            timed.add(images, crops, tokens, seconds)
        log.append({"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4), "loss": loss,
                    "lr": lr, "tokens": int(tokens), "img_per_s": images / seconds, "step_s": seconds})
        trackers.log_step(accelerator, run, log[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if run.checkpoint_every and (step + 1) % run.checkpoint_every == 0 and step + 1 < total_steps:
            save_checkpoint(accelerator, checkpoint_dir, step + 1, {"step": step + 1, "log": log}, fingerprint)
    bar.close()

    metrics = {
        "img_per_s": timed.per_second(timed.images),
        "tokens_per_s": timed.per_second(timed.tokens),
        "peak_mem_gib": peak_memory_gib(accelerator.device),
        **mfu_entry(run, accelerator.unwrap_model(model).config, accelerator.device, timed,
                    accelerator.num_processes),
        "wall_s": time.perf_counter() - wall_start,
        "steps": total_steps,
        "final_loss": log[-1]["loss"] if log else None,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "weights_dtype": dtype_name(model, trainable=True),
        "frozen_weights_dtype": dtype_name(model, trainable=False),
        "autocast_dtype": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else None,
        "deepspeed": uses_deepspeed,
        "processes": accelerator.num_processes,
        "accumulation_steps": accumulation,
        "settings": settings_of(run),  # the speed-relevant settings used (the memory fit's choice)
        **({"memory_fit": micro_fit.as_dict()} if micro_fit else {}),
    }
    accelerator.wait_for_everyone()
    return FitResult(model, accelerator, log, metrics, timed, run)


def check_same_fit(accelerator, run: RunConfig) -> None:
    """Every process must have probed the same micro-batch plan, or their steps would not line up."""
    chosen = torch.tensor([[run.per_device_batch_size, run.checkpointed_layers]], device=accelerator.device)
    every = accelerator.gather(chosen)
    if (every != chosen).any():
        raise UserError(f"run {run.run!r}: the memory probe chose different (per-device batch, checkpointed "
                        f"layers) on different processes: {every.tolist()} — set per_device_batch_size and "
                        "checkpointed_layers yourself instead of memory_budget_gib")


def to_device(batch: dict, device: torch.device, pixel_dtype: torch.dtype | None) -> dict:
    """Move a collated batch (tensors; plain numbers stay); DeepSpeed runs without autocast, so
    pixels take the weights' dtype."""
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
             for k, v in batch.items() if v is not None}
    if pixel_dtype is not None and "pixel_values" in moved:
        moved["pixel_values"] = moved["pixel_values"].to(pixel_dtype)
    return moved


def batch_counts(batch: dict) -> torch.Tensor:
    """(images, crops, non-padding tokens) of a collated batch, as one tensor to reduce."""
    # a batch without images carries pixel_values / image_sizes = None
    images = batch["image_sizes"].shape[0] if batch.get("image_sizes") is not None else 0
    crops = batch["pixel_values"].shape[0] if batch.get("pixel_values") is not None else 0
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    return torch.tensor([images, crops, tokens], dtype=torch.float64)


def dtype_name(model, *, trainable: bool) -> str | None:
    """dtype of the (first) trainable or frozen parameter: what the run actually holds in memory."""
    dtype = next((p.dtype for p in model.parameters() if p.requires_grad == trainable), None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


@dataclass
class Throughput:
    """What the timed steps processed, summed over processes (the first step is not timed)."""

    steps: int = 0
    images: float = 0.0
    crops: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0

    def add(self, images, crops, tokens, seconds) -> None:
        self.steps += 1
        self.images, self.crops = self.images + images, self.crops + crops
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds

    def per_second(self, amount: float) -> float | None:
        return amount / self.seconds if self.seconds else None


def mfu_entry(run: RunConfig, model_config, device: torch.device, timed: Throughput, num_devices: int,
              samples_per_s: float | None = None) -> dict:
    """MFU from the measured throughput, or null with the reason when it cannot be known."""
    from . import flops

    if device.type != "cuda":
        return {"mfu": None, "mfu_reason": f"no peak FLOP/s known for a {device.type} device"}
    name = torch.cuda.get_device_name(device)
    peak = flops.peak_flops(name, run.precision)
    if peak is None or not timed.seconds:
        return {"mfu": None, "mfu_reason": f"no peak FLOP/s known for {name} in {run.precision}"}
    samples = timed.steps * run.batch_size
    samples_per_s = samples_per_s if samples_per_s is not None else timed.per_second(samples)
    per_sample = flops.training_flops_per_sample(
        flops.ModelShape.from_config(model_config), seq_len=timed.tokens / samples,
        num_crops=timed.crops / samples, strategy=run.strategy)
    return {"mfu": flops.mfu(per_sample, samples_per_s, num_devices=num_devices,
                             peak_flops_per_device=peak), "mfu_reason": None}


# ---- outputs -----------------------------------------------------------------------------------

def save_processor(base_model: Path, run: RunConfig, folder: Path) -> None:
    """The processor this run trained with (its num_crops), so the exported folder loads as trained."""
    from phi3v.processing_phi3v import Phi3VProcessor

    Phi3VProcessor.from_pretrained(base_model, num_crops=run.num_crops).save_pretrained(folder)


def save_adapter(model, folder: Path) -> None:
    """The LoRA weights and `adapter_config.json`, the same bytes for the same run."""
    for config in model.peft_config.values():
        # peft keeps target_modules as a set and writes list(set): an order that changes with the hash seed
        for key, value in vars(config).items():
            if isinstance(value, set):
                setattr(config, key, sorted(value))
    model.save_pretrained(folder, save_embedding_layers=False)  # only LoRA weights train


def export_merged_lora(base_model: Path, adapter_dir: Path, folder: Path) -> None:
    """Merge the adapter into a fresh full-precision base (every CLIP layer back) and save it."""
    from peft import PeftModel

    from phi3v.modeling_phi3v import Phi3VForCausalLM

    from .lora_adapter import check_adapter_fits

    base = Phi3VForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    saved_dtype = base.config.dtype or torch.float32  # the base checkpoint's own dtype
    base.drop_unused_vision_layers()  # as in training: the adapter has nothing there; saving restores them
    check_adapter_fits(adapter_dir, base, str(base_model))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.to(getattr(torch, str(saved_dtype).removeprefix("torch.")))
    merged.save_pretrained(folder)


def write_outputs(model, run: RunConfig, *, base_model: Path, data_dir: Path, out_dir: Path,
                  log: list, metrics: dict) -> None:
    from phi3v import provenance

    out_dir.mkdir(parents=True, exist_ok=True)
    if run.strategy.is_lora:
        with atomic_output_dir(out_dir / ADAPTER) as adapter_dir:
            save_adapter(model, adapter_dir)
        with atomic_output_dir(out_dir / MODEL) as model_dir:
            export_merged_lora(base_model, out_dir / ADAPTER, model_dir)
            save_processor(base_model, run, model_dir)
    else:
        with atomic_output_dir(out_dir / MODEL) as model_dir:
            model.save_pretrained(model_dir)
            save_processor(base_model, run, model_dir)
    write_text_atomic(out_dir / TRAIN_LOG, "".join(json.dumps(entry) + "\n" for entry in log))
    write_json_atomic(out_dir / PROVENANCE, provenance.collect(
        run.to_dict(), model_dir=base_model, data_dir=data_dir,
        extra={"precision": {k: metrics[k] for k in ("weights_dtype", "frozen_weights_dtype",
                                                     "autocast_dtype", "deepspeed")}}))
    write_json_atomic(out_dir / METRICS_FILE, metrics)


# ---- command line ------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m phi3v.training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--run-json", required=True, help="resolved run config: JSON text or a .json file")
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--checkpoint-dir", required=True)
    return parser.parse_args(argv)


def read_run_json(text: str) -> RunConfig:
    """`--run-json`: the run config as JSON text, or the path of a .json file holding it."""
    source = Path(text) if not text.lstrip().startswith("{") else None
    try:
        data = json.loads(source.read_text() if source else text)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--run-json: cannot read a run config from {text[:80]!r} ({exc}) — give JSON "
                        "text or a path to a .json file") from exc
    return RunConfig.from_dict(data)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    train(read_run_json(args.run_json), base_model=args.base_model, data_dir=args.data_dir,
          dataset_name=args.dataset, out_dir=args.out_dir, checkpoint_dir=args.checkpoint_dir)


if __name__ == "__main__":
    sys.exit(main())
