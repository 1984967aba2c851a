"""The recipe's optimiser: AdamW with its weight-decay groups, and the linear schedule with warmup."""

from __future__ import annotations

import torch

from .run_config import RunConfig


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


def adamw_kernel(params) -> dict:
    """AdamW's implementation: the fused kernel (one launch for every tensor) on CUDA; elsewhere torch's
    default, whose bits the CPU demo is pinned to (foreach would change them for bf16 adapters)."""
    return {"fused": True} if params and all(p.is_cuda for p in params) else {}


def linear_schedule_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
                                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' `get_linear_schedule_with_warmup`, the same floats: its module imports peft and
    bitsandbytes (~2 s of CPU a job), which a full or frozen-vision run does not otherwise load."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
