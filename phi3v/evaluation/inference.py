"""The model as evaluation and `phi3v generate` run it: the weights' dtype and the autocast of a
precision on a device, and a model folder loaded for evaluation."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from phi3v.errors import UserError
from phi3v.training.run_config import PRECISIONS, precision_dtype

# fp32: how the recipe evaluates an fp16 LoRA run (adapter on the base reloaded in fp32)
EVAL_PRECISIONS = PRECISIONS + ("fp32",)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype a precision computes in (training's table); None for fp32, which needs no autocast."""
    return None if precision == "fp32" else precision_dtype(precision)


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Half-precision weights on GPU; on CPU fp32 weights under autocast (see `precision_context`)."""
    dtype = autocast_dtype(precision) if device.type == "cuda" else None
    return torch.float32 if dtype is None else dtype


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """On CPU, compute in the run's precision with autocast (fp16 included) rather than in fp32."""
    dtype = None if device.type == "cuda" else autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cpu", dtype=dtype)


def load_model(model_dir: str | os.PathLike, precision: str, attention: str, device: torch.device,
               quantization_config=None):
    """The model in the evaluation precision; `quantization_config`: 4-bit, as the recipe's QLoRA
    scripts evaluate the base before training."""
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.processing_phi3v import Phi3VProcessor, check_compatible

    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"{model_dir} is not a model folder (no config.json): train the run first")
    placement = {"quantization_config": quantization_config, "device_map": {"": device}} if quantization_config else {}
    model = Phi3VForCausalLM.from_pretrained(
        model_dir, dtype=inference_dtype(precision, device), attn_implementation=attention, **placement
    )
    if not quantization_config:  # bitsandbytes placed it already
        model.to(device)
    model.eval()
    processor = Phi3VProcessor.from_pretrained(model_dir)
    check_compatible(model, processor, str(model_dir))
    return model, processor
