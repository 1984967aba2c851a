"""One training run as a typed value: `RunConfig`, and the recipe's rules in `Strategy`.

The workflow resolves each run once into a `RunConfig`; training, the speed rows and the demo's
pre-training take it as it is. Each rule of the recipe is written here once: what a strategy trains,
what needs a LoRA rank, when DeepSpeed applies, which precision/attention pairs work. What depends on
the machine (CUDA, bitsandbytes, flash-attn, bf16 support) is checked at run start instead
(`phi3v.training.model_setup.check_run`). No torch at import: Snakemake reads this while planning.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass

from phi3v.data import TRAIN_TURNS
from phi3v.errors import UserError
from phi3v.layout import BASE_RUN  # no training run may take the name of the model before fine-tuning

PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # precision -> torch dtype name
PRECISIONS = tuple(PRECISION_DTYPES)
ATTENTIONS = ("flash_attention_2", "sdpa", "eager")
TRACKERS = ("tensorboard", "wandb", "mlflow")  # accelerate's trackers a run may report to
# sample_mean: each sample's loss is the mean over its own supervised tokens, samples averaged (the
# recipe: HF Trainer at per-device batch 1); token_mean: the mean over every supervised token of the
# effective batch (HF Trainer since 4.46, with num_items_in_batch).
LOSS_REDUCTIONS = ("sample_mean", "token_mean")
# base: LoRA adapters in the base weights' dtype (the recipe's `add_adapter`, peft 0.11); fp32: upcast
# (current peft's `get_peft_model` default, autocast_adapter_dtype=True).
ADAPTER_DTYPES = ("base", "fp32")
# length: attend to every token of a sample (padding masked); pad_id: mask every position holding the pad
# id, the `<|endoftext|>` ending each turn included (the recipe's NLVR2 collator: `input_ids != pad`).
ATTENTION_MASKS = ("length", "pad_id")


class Strategy(str, enum.Enum):
    """What a run trains. A `str`, so it compares equal to (and serialises as) its name."""

    FULL = "full"
    FROZEN_VISION = "frozen_vision"
    LORA = "lora"
    QLORA = "qlora"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value):
        raise UserError(f"unknown strategy {value!r}; choose one of {', '.join(s.value for s in cls)}")

    @property
    def is_lora(self) -> bool:
        """Trains peft LoRA adapters over a frozen base (QLoRA: the base in 4-bit NF4)."""
        return self in (Strategy.LORA, Strategy.QLORA)

    @property
    def trains_vision(self) -> bool:
        """Updates CLIP and the projector: directly, or (LoRA) through adapters on them."""
        return self is not Strategy.FROZEN_VISION

    @property
    def needs_rank(self) -> bool:
        """Needs `lora_rank` and `lora_alpha`; every other strategy must leave them unset."""
        return self.is_lora

    @property
    def uses_deepspeed(self) -> bool:
        """The recipe trains full-parameter runs under DeepSpeed ZeRO-2 and LoRA runs under plain DDP."""
        return not self.is_lora


STRATEGIES = tuple(strategy.value for strategy in Strategy)
LORA_FIELDS = ("lora_rank", "lora_alpha")
# Settings beyond the recipe: a run config written before they existed reads with them off.
OPTION_FIELDS = ("memory_budget_gib", "checkpointed_layers", "compile_layers", "fused_kernels",
                 "frozen_vision_no_grad")
# The recipe's behaviours made settings later: a run config without them takes the recipe's value.
RECIPE_SETTING_FIELDS = ("loss_reduction", "adapter_dtype", "attention_mask")


def precision_dtype(precision: str):
    """The torch dtype a precision name computes in (the one precision -> dtype table)."""
    import torch

    return getattr(torch, PRECISION_DTYPES[precision])


def run_id(strategy: str, precision: str, attention: str) -> str:
    """A table row's run name, `<strategy>-<precision>-<attention>`."""
    return f"{strategy}-{precision}-{attention}"


@dataclass(frozen=True)
class RunConfig:
    """Every setting one training run needs; defaults are the recipe's (AdamW, linear schedule)."""

    dataset: str
    run: str
    strategy: Strategy
    precision: str
    attention: str
    learning_rate: float
    epochs: float
    num_crops: int
    batch_size: int = 64  # effective: over processes and accumulation
    per_device_batch_size: int = 1
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    packing: bool = False
    checkpoint_every: int | None = None
    max_steps: int | None = None
    max_train_samples: int | None = None
    seed: int = 0
    deepspeed: bool = False
    # The recipe's choices that this project keeps as named options (defaults = the recipe's):
    train_turns: str = "all"  # see TRAIN_TURNS; the workflow takes it from the dataset's setting
    # frozen_vision: the LM's token embeddings freeze with the vision model. The recipe's
    # `vision_embed_tokens.requires_grad_(False)` reaches them because the hub's image embedding holds
    # the shared embedding module; false trains them (the LM's full weights minus nothing).
    freeze_token_embeddings: bool = True
    # lora/qlora: adapters also on CLIP and the projector (the recipe without --freeze_vision_model);
    # false: on the language model only (the recipe's --use_lora --freeze_vision_model).
    lora_on_vision: bool = True
    report_to: tuple[str, ...] = ()  # experiment trackers (TRACKERS); empty: none
    loss_reduction: str = "sample_mean"  # LOSS_REDUCTIONS; the recipe's: sample_mean
    adapter_dtype: str = "base"  # ADAPTER_DTYPES (LoRA/QLoRA); the recipe's: base
    attention_mask: str = "length"  # ATTENTION_MASKS; the recipe's: pad_id for NLVR2, length otherwise
    # Beyond the recipe, off by default (phi3v.training.optimizations, phi3v.training.memory_fit):
    memory_budget_gib: float | None = None  # pick per-device batch + checkpointed layers that fit
    checkpointed_layers: int | None = None  # recompute only the first N decoder layers (None: all)
    compile_layers: bool = False  # torch.compile each decoder and CLIP layer (regional compilation)
    fused_kernels: bool = False  # Liger's RMSNorm, SwiGLU and RoPE kernels (needs liger-kernel, CUDA)
    frozen_vision_no_grad: bool = False  # run a vision tower without trainable weights without autograd

    def __post_init__(self) -> None:
        for key, choices in (("strategy", STRATEGIES), ("precision", PRECISIONS), ("attention", ATTENTIONS)):
            if getattr(self, key) not in choices:
                self._refuse(f"{key}={getattr(self, key)!r} — choose one of {', '.join(choices)}")
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        if isinstance(self.report_to, str) or not all(name in TRACKERS for name in self.report_to):
            self._refuse(f"report_to={self.report_to!r} — give a list of trackers out of {', '.join(TRACKERS)} "
                         "(empty: none)")
        object.__setattr__(self, "report_to", tuple(self.report_to))
        if self.run == BASE_RUN:
            self._refuse(f"the name {BASE_RUN!r} is the model before fine-tuning — name the run otherwise")
        check_precision_attention(self.precision, self.attention, f"run {self.run!r}")
        for key, choices in (("loss_reduction", LOSS_REDUCTIONS), ("adapter_dtype", ADAPTER_DTYPES),
                             ("attention_mask", ATTENTION_MASKS)):
            if getattr(self, key) not in choices:
                self._refuse(f"{key}={getattr(self, key)!r} — choose one of {', '.join(choices)}")
        if self.train_turns not in TRAIN_TURNS:
            self._refuse(f"train_turns={self.train_turns!r} — choose one of {', '.join(TRAIN_TURNS)}")
        if self.attention_mask == "pad_id" and self.packing:
            self._refuse("attention_mask: pad_id masks by token id in padded batches; packing has no mask — "
                         "remove one of the two")
        if not self.lora_on_vision and not self.strategy.is_lora:
            self._refuse("lora_on_vision: false only applies to LoRA runs — remove it, or use strategy "
                         "frozen_vision to freeze the vision model of a full-parameter run")
        if self.strategy.needs_rank:
            missing = [key for key in LORA_FIELDS if getattr(self, key) is None]
            if missing:
                self._refuse(f"strategy {self.strategy} needs {', '.join(missing)} — set them on the run")
        else:
            given = [key for key in LORA_FIELDS if getattr(self, key) is not None]
            if given:
                self._refuse(f"{', '.join(given)} only apply to LoRA runs; remove them or use strategy lora or qlora")
        if self.deepspeed and not self.strategy.uses_deepspeed:
            self._refuse(f"deepspeed: true only applies to full-parameter runs ({self.strategy} runs under "
                         "plain DDP, as in the recipe) — set deepspeed: false")
        self._check_options()

    def _check_options(self) -> None:
        if self.checkpointed_layers is not None:
            if not self.gradient_checkpointing:
                self._refuse("checkpointed_layers needs gradient_checkpointing: true — set it, or remove "
                             "checkpointed_layers")
            if self.checkpointed_layers < 0:
                self._refuse(f"checkpointed_layers={self.checkpointed_layers} — give 0 or more")
        if self.memory_budget_gib is not None:
            if self.memory_budget_gib <= 0:
                self._refuse(f"memory_budget_gib={self.memory_budget_gib} — give a positive size in GiB")
            if self.checkpointed_layers is not None:
                self._refuse("memory_budget_gib chooses checkpointed_layers itself — remove one of the two")
            if not self.gradient_checkpointing:
                self._refuse("memory_budget_gib chooses how many layers to checkpoint — set "
                             "gradient_checkpointing: true (the fit may still checkpoint none)")

    def _refuse(self, message: str):
        raise UserError(f"run {self.run!r}: {message}")

    @property
    def dtype(self):
        """The torch dtype this run computes in."""
        return precision_dtype(self.precision)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """A resolved run config (every field, nothing else), e.g. read back from `to_dict`'s JSON."""
        if not isinstance(data, dict):
            raise UserError(f"a run config is a mapping of its fields, not {type(data).__name__}")
        name = data.get("run")
        missing = [key for key in cls.fields()
                   if key not in data and key not in OPTION_FIELDS + RECIPE_SETTING_FIELDS]
        if missing:
            raise UserError(f"run config {name!r} lacks {', '.join(missing)} — resolve it with "
                            "phi3v.workflow.settings.resolve_config")
        unknown = sorted(set(data) - set(cls.fields()))
        if unknown:
            raise UserError(f"run config {name!r}: unknown key(s) {', '.join(unknown)}; "
                            f"allowed keys: {', '.join(cls.fields())}")
        return cls(**data)

    def to_dict(self) -> dict:
        """Plain data in field order (the strategy as its name): JSON, Snakemake params, provenance."""
        return {**dataclasses.asdict(self), "strategy": self.strategy.value, "report_to": list(self.report_to)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def loads_bf16(attention: str) -> bool:
    """The recipe loads the model in bf16 with flash attention and in fp32 otherwise (its fp16 rows:
    fp32 weights under fp16 mixed precision). SDPA counts as flash: this project uses it only in
    flash's place where flash-attn cannot run (the demo, CPUs); the recipe never uses it."""
    return attention in ("flash_attention_2", "sdpa")


def evaluation_precision(run: RunConfig) -> str:
    """The precision a trained run is evaluated in, as the recipe evaluates it after training.

    Full-parameter runs: the model DeepSpeed trained, cast in place to the run's precision.
    LoRA/QLoRA: the adapter on the base reloaded by the loading rule (`loads_bf16`, never quantised):
    bf16 with flash attention, else fp32 (so an fp16 LoRA run is evaluated in fp32).
    """
    if run.strategy.is_lora and not loads_bf16(run.attention):
        return "fp32"
    return run.precision


def check_precision_attention(precision: str, attention: str, where: str) -> None:
    """flash-attn kernels compute in bf16 only; the recipe runs its fp16 rows with eager attention."""
    if precision == "fp16" and attention == "flash_attention_2":
        raise UserError(f"{where}: flash_attention_2 does not support fp16; use precision bf16, or "
                        "attention eager or sdpa for fp16 (the recipe uses eager)")


# run fields a speed row may set (this project's best settings); the recipe's rows set none
ROW_SETTINGS = ("per_device_batch_size", "gradient_checkpointing", "packing", *OPTION_FIELDS)


def speed_run(row: dict, *, dataset_name: str, num_crops: int, steps: int, warmup: int,
              lora_rank: int = 64) -> RunConfig:
    """The run config a speed row (`phi3v.training.speed`) trains with: recipe settings, effective batch of the row."""
    strategy = Strategy(row["strategy"])
    rank = dict(lora_rank=lora_rank, lora_alpha=2 * lora_rank) if strategy.needs_rank else {}
    return RunConfig(
        dataset=dataset_name, run=f"speed-{row['row']}", strategy=strategy, precision=row["precision"],
        attention=row["attention"], learning_rate=1e-5, epochs=1, num_crops=num_crops,
        batch_size=row["effective_batch"], warmup_steps=0, max_steps=warmup + steps, **rank,
        deepspeed=row["deepspeed"],  # resolved by the workflow: the preset's `train.deepspeed`
        **{key: row[key] for key in ROW_SETTINGS if row.get(key) is not None},  # beyond the recipe
    )
