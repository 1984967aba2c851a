"""What a run trains and how: start-up checks, model loading, freezing, LoRA/QLoRA, DeepSpeed config.

The recipe's rules live in `run_config` (`Strategy`, `RunConfig`); what this machine cannot do is
refused here, at start, with the reason; nothing is replaced.
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import UserError
from .devices import local_device
from .memory_plan import ZERO2_BUCKET_ELEMENTS, ZERO2_OVERLAP_COMM
from .run_config import RunConfig, Strategy, load_precision

VISION_PREFIX = "model.vision_embed_tokens."
LM_LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"]
VISION_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2",
                       "img_projection.0", "img_projection.2"]
FLASH_MIN_CAPABILITY = (8, 0)  # flash-attn 2 runs on Ampere (sm80) and newer


def load_dtype(run: RunConfig) -> torch.dtype:
    """dtype the model is loaded in: the recipe's rule (`load_precision`: bf16 with flash attention, fp32
    otherwise) for every run it loads that way.

    LoRA/QLoRA keep the base as loaded and compute under autocast, as the recipe's DDP runs do.
    DeepSpeed casts the module to the run's precision and keeps fp32 master weights: a bf16 load is
    the same numbers. A full-parameter run without DeepSpeed (the demo) keeps fp32 master weights
    and computes under autocast: DeepSpeed's arithmetic without DeepSpeed.
    """
    if run.strategy.is_lora or run.deepspeed:
        return torch.bfloat16 if load_precision(run) == "bf16" else torch.float32
    return torch.float32


def _fp16_autocast_works(device: torch.device) -> bool:
    """True when autocast really computes in fp16 on this device (else fp16 would silently be fp32)."""
    try:
        with torch.autocast(device.type, dtype=torch.float16):
            out = torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        torch.amp.GradScaler(device.type)
    except (RuntimeError, ValueError):
        return False
    return out.dtype == torch.float16


def _nf4_works(device: torch.device) -> str | None:
    """None when bitsandbytes can quantise to NF4 on this device, else the reason it cannot."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'phi3v[qlora]')"
    try:
        import bitsandbytes.functional as bnbf

        weight = torch.randn(64, 64, device=device, dtype=torch.bfloat16)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)
    except Exception as exc:  # bitsandbytes raises many kinds when a backend is missing
        return f"bitsandbytes cannot quantise to NF4 on {device.type}: {exc}"
    return None


def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def capability_text(device: torch.device) -> str:
    return "compute capability {}.{}".format(*torch.cuda.get_device_capability(device))


def check_run(run: RunConfig, device: torch.device) -> None:
    """Refuse at start what this machine cannot do for the run (UserError naming why)."""
    name = run.run
    if run.attention == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if importlib.util.find_spec("flash_attn") is None:
            raise UserError(f"run {name!r}: flash_attention_2 needs the flash-attn package "
                            "(pip install 'phi3v[flash]') — or use attention sdpa")
        if device.type != "cuda" or not is_flash_attn_2_available():
            raise UserError(f"run {name!r}: flash_attention_2 needs a CUDA GPU that flash-attn supports "
                            f"(this is {device.type}) — use attention sdpa or eager")
        if torch.cuda.get_device_capability(device) < FLASH_MIN_CAPABILITY:
            raise UserError(f"run {name!r}: flash_attention_2 needs compute capability 8.0 or newer (Ampere); "
                            f"{gpu_name(device)} has {capability_text(device)} — use attention sdpa or eager")
    # emulated bf16 (pre-Ampere GPUs) is fp32 arithmetic at a fraction of the speed: not bf16 training
    if (run.precision == "bf16" and device.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise UserError(f"run {name!r}: {gpu_name(device)} ({capability_text(device)}) has no native bf16 — "
                        "use precision fp16 (attention sdpa or eager)")
    if run.precision == "fp16" and run.deepspeed and device.type != "cuda":
        raise UserError(f"run {name!r}: DeepSpeed has no fp16 on {device.type} — set deepspeed: false")
    if run.precision == "fp16" and not run.deepspeed and not _fp16_autocast_works(device):
        raise UserError(f"run {name!r}: fp16 mixed precision is not available on {device.type} with "
                        f"torch {torch.__version__} — use precision bf16")
    if run.strategy is Strategy.QLORA:
        reason = _nf4_works(device)
        if reason:
            raise UserError(f"run {name!r}: qlora needs 4-bit NF4 weights but {reason} — use strategy lora")
    if run.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"run {name!r}: deepspeed: true but DeepSpeed is not installed "
                        "(pip install 'phi3v[deepspeed]') — or set deepspeed: false")


def lora_targets(run: RunConfig) -> list[str]:
    """The recipe's LoRA targets: the LM always, CLIP and the projector unless `lora_on_vision` is off."""
    return LM_LORA_TARGETS + (VISION_LORA_TARGETS if run.lora_on_vision else [])


def quantization_config(run: RunConfig):
    """The recipe's bitsandbytes settings: NF4, no double quantisation, compute dtype bf16 where it
    loads bf16 (flash attention), else fp16."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if load_precision(run) == "bf16" else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                              bnb_4bit_compute_dtype=compute)


def load_model(run: RunConfig, base_model: str, device: torch.device | None = None):
    """Load the base model the way the strategy needs it (dtype, attention, NF4 for QLoRA).

    On a GPU the weights load straight onto this process's own GPU (`device_map={"": index}`, the
    way accelerate/peft/bitsandbytes place a 4-bit model per process; accelerate refuses to move
    one later), not through host memory and not onto GPU 0.
    """
    from ..modeling_phi3v import Phi3VForCausalLM

    device = device or local_device()
    kwargs = {"dtype": load_dtype(run), "attn_implementation": run.attention}
    if run.strategy is Strategy.QLORA:
        kwargs["quantization_config"] = quantization_config(run)
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index}
    return Phi3VForCausalLM.from_pretrained(base_model, **kwargs)


def freeze_vision(model, *, freeze_token_embeddings: bool = True) -> None:
    """Freeze CLIP, projector and separators, and (the recipe's behaviour, see
    `RunConfig.freeze_token_embeddings`) the LM's token embeddings; the rest of the LM trains."""
    for name, param in model.named_parameters():
        if name.startswith(VISION_PREFIX):
            param.requires_grad_(False)
    if freeze_token_embeddings:
        model.get_input_embeddings().requires_grad_(False)


def apply_lora(model, run: RunConfig):
    """Wrap in peft LoRA with the run's rank/alpha/dropout, Gaussian init, the recipe's targets.

    QLoRA as the recipe: the NF4 base as loaded, no `prepare_model_for_kbit_training` (it would cast
    the unquantised weights to fp32 and make the inputs require grad); non-reentrant checkpointing
    needs neither. `adapter_dtype: base` keeps the adapters in the base weights' dtype, as the
    recipe's `add_adapter` (peft 0.11) did; `fp32` upcasts them (current peft's default).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=run.lora_rank, lora_alpha=run.lora_alpha, lora_dropout=run.lora_dropout,
                        target_modules=lora_targets(run), init_lora_weights="gaussian",
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config, autocast_adapter_dtype=run.adapter_dtype == "fp32")
    if run.adapter_dtype == "base":
        adapters_in_base_dtype(model)
    return model


def adapters_in_base_dtype(model) -> None:
    """Each adapter in its base weight's dtype, or fp32 over a 4-bit weight: what peft 0.11 (the recipe's
    `add_adapter`) did; current peft puts them in the 4-bit layers' compute dtype instead."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
            for adapters in (module.lora_A, module.lora_B):
                adapters.to(dtype)


def build_model(run: RunConfig, base_model: str, device: torch.device | None = None):
    """The model ready to train on `device` (default: this process's, `local_device`): loaded, frozen
    or wrapped per strategy, checkpointing as asked."""
    model = load_model(run, base_model, device)
    # CLIP layers after the feature layer never reach the loss; the model keeps them for saving
    model.drop_unused_vision_layers()
    if run.strategy.is_lora:
        model = apply_lora(model, run)
    elif not run.strategy.trains_vision:
        freeze_vision(model, freeze_token_embeddings=run.freeze_token_embeddings)
    if run.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.config.use_cache = False
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant); transformers renamed this from gradient_checkpointing_*."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count their logical size, not their bytes."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if hasattr(param, "quant_state"):
            count *= 2  # two 4-bit values a byte
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def deepspeed_config(run: RunConfig, accumulation_steps: int) -> dict:
    """The recipe's ZeRO-2 settings with every `auto` field filled from the run."""
    bucket = ZERO2_BUCKET_ELEMENTS
    return {
        "train_batch_size": run.batch_size,
        "train_micro_batch_size_per_gpu": run.per_device_batch_size,
        "gradient_accumulation_steps": accumulation_steps,
        "gradient_clipping": run.max_grad_norm,
        "bf16": {"enabled": run.precision == "bf16"},
        "fp16": {"enabled": run.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": {"stage": 2, "allgather_partitions": True, "allgather_bucket_size": bucket,
                              "overlap_comm": ZERO2_OVERLAP_COMM, "reduce_scatter": True, "reduce_bucket_size": bucket,
                              "contiguous_gradients": True, "round_robin_gradients": True},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
