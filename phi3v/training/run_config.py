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
from pathlib import Path

from phi3v.data import TRAIN_TURNS
from phi3v.errors import UserError
from phi3v.layout import BASE_RUN  # no training run may take the name of the model before fine-tuning
from phi3v.model_sizes import MAX_NUM_CROPS

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
LORA_FIELDS = ("lora_rank", "lora_alpha")  # what `needs_rank` needs

# Each field is declared with `setting(...)`: its default, its bounds and choices, what it means, and
# which lists it belongs to. Everything else is derived from these declarations:
# phi3v.training.run_fields writes the schema's `run_fields` and `speed_row` entries and README's table
# of speed settings from them, and the tuples below list them.
RECIPE, RECIPE_SETTING, OPTION, JOB = "recipe", "recipe_setting", "option", "job"  # where a field comes from


def setting(default=dataclasses.MISSING, *, about: str = "", choices: tuple | None = None, minimum=None,
            above=None, maximum=None, kind: str = RECIPE, speed_row: bool = False, trajectory: bool = True,
            speed_only: bool = False, label: str | None = None, note: str | None = None):
    """A RunConfig field with what the rest of the project derives from it.

    kind: RECIPE (the recipe's settings, every resolved run config has them), RECIPE_SETTING (the recipe's
    behaviour made a setting later: absent, the recipe's value), OPTION (beyond the recipe, absent: off),
    JOB (names the run; not a preset setting). speed_row: a speed row may set it. trajectory: it changes
    the weights (enters the checkpoint fingerprint). speed_only: changes how fast a step runs, never what
    it computes (README's table). label: the speed table's words for it when on. note: the tables' note
    on the rows that turn it on (`{value}`: its value), a departure from the recipe.
    """
    metadata = dict(about=about, choices=choices, minimum=minimum, above=above, maximum=maximum, kind=kind,
                    speed_row=speed_row, trajectory=trajectory, speed_only=speed_only, label=label, note=note)
    return dataclasses.field(default=default, metadata=metadata)


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

    dataset: str = setting(kind=JOB)
    run: str = setting(kind=JOB)
    strategy: Strategy = setting(choices=STRATEGIES)
    precision: str = setting(choices=PRECISIONS)
    attention: str = setting(choices=ATTENTIONS)
    learning_rate: float = setting(above=0)
    epochs: float = setting(above=0)
    num_crops: int = setting(minimum=1, maximum=MAX_NUM_CROPS)  # the recipe's scripts allow 1 to 16
    batch_size: int = setting(64, minimum=1, about="effective batch: over processes and accumulation")
    per_device_batch_size: int = setting(1, minimum=1, speed_row=True)
    lora_rank: int | None = setting(None, minimum=1)
    lora_alpha: float | None = setting(None, above=0)
    lora_dropout: float = setting(0.0, minimum=0, maximum=1)
    weight_decay: float = setting(0.01, minimum=0)
    warmup_steps: int = setting(50, minimum=0)
    max_grad_norm: float = setting(1.0, above=0)
    gradient_checkpointing: bool = setting(True, speed_row=True)
    packing: bool = setting(
        False, speed_row=True, speed_only=True, label="packed", note="packed micro-batches (one row, no padding)",
        about="one row per micro-batch without padding; fast with flash_attention_2 (its varlen kernel); sdpa "
              "and eager attend through a dense block-diagonal mask instead, slower than padding")
    checkpoint_every: int | None = setting(None, minimum=1, trajectory=False)
    max_steps: int | None = setting(None, minimum=1)
    max_train_samples: int | None = setting(None, minimum=1)
    seed: int = setting(0)
    deepspeed: bool = setting(
        False, about="DeepSpeed ZeRO-2 for full-parameter runs; in `train`/`run_overrides` it applies to those "
                     "only, on a LoRA run it is refused")
    # The recipe's choices that this project keeps as named options (defaults = the recipe's):
    train_turns: str = setting(
        "all", choices=TRAIN_TURNS,
        about="all: train every turn of a conversation in one sequence; one_random: each visit trains one turn "
              "drawn at random, with one of its accepted answers (the recipe's DocVQA). Defaults to the "
              "dataset's `train_turns`")
    freeze_token_embeddings: bool = setting(
        True, about="frozen_vision: the LM's token embeddings freeze with the vision model, as in the recipe "
                    "(default true); false trains them")
    lora_on_vision: bool = setting(
        True, about="lora/qlora: adapters on CLIP and the projector too (default true); false: the language "
                    "model only, the recipe's --use_lora --freeze_vision_model")
    report_to: tuple[str, ...] = setting(
        (), choices=TRACKERS, trajectory=False,
        about="experiment trackers (accelerate's) that receive the run config and every train_log.jsonl line; "
              "files under <run folder>/trackers/; empty: none")
    loss_reduction: str = setting(
        "sample_mean", choices=LOSS_REDUCTIONS, kind=RECIPE_SETTING,
        about="how a step's loss averages the effective batch; sample_mean (the recipe's, HF Trainer at "
              "per-device batch 1): each sample's loss is the mean over its own supervised tokens, samples "
              "averaged; token_mean: the mean over every supervised token (HF Trainer since 4.46). Default "
              "sample_mean; the tables note token_mean")
    adapter_dtype: str = setting(
        "base", choices=ADAPTER_DTYPES, kind=RECIPE_SETTING,
        about="lora/qlora: base (the recipe's add_adapter, peft 0.11): adapters in the base weights' dtype "
              "(bf16 for bf16 rows); fp32: upcast (current peft's get_peft_model default). Default base; the "
              "tables note fp32")
    attention_mask: str = setting(
        "length", choices=ATTENTION_MASKS, kind=RECIPE_SETTING,
        about="length: every token of a sample attended, padding masked; pad_id: every position holding the "
              "pad id masked, the <|endoftext|> ending each turn included (the recipe's NLVR2 collator). "
              "Default length; the paper preset's NLVR2 runs set pad_id; the tables note a value other than "
              "the recipe's")
    # Beyond the recipe, off by default (phi3v.training.optimizations, phi3v.training.memory_fit):
    memory_budget_gib: float | None = setting(
        None, above=0, kind=OPTION, speed_row=True, speed_only=True,
        note="per-device batch and checkpointed layers fitted to {value} GiB",
        about="a short probe picks the largest per-device batch and the fewest checkpointed decoder layers "
              "that fit this many GiB (the effective batch stays batch_size)")
    checkpointed_layers: int | None = setting(
        None, minimum=0, kind=OPTION, speed_row=True, speed_only=True,
        note="only the first {value} decoder layers checkpointed",
        about="with gradient_checkpointing, recompute only the first N decoder layers (null: all)")
    compile_layers: bool = setting(
        False, kind=OPTION, speed_row=True, speed_only=True, label="compiled layers",
        note="torch.compile'd layers",
        about="torch.compile each decoder and CLIP layer")
    fused_kernels: bool = setting(
        False, kind=OPTION, speed_row=True, speed_only=True, label="Liger kernels",
        note="Liger's fused kernels",
        about="Liger's fused RMSNorm, SwiGLU and RoPE (needs liger-kernel and a CUDA GPU; refused otherwise)")
    frozen_vision_no_grad: bool = setting(
        False, kind=OPTION, speed_row=True, speed_only=True, label="frozen vision without autograd",
        note="frozen vision tower run without autograd",
        about="a vision tower without trainable weights runs without autograd")
    dataloader_workers: int | None = setting(
        None, minimum=0, kind=OPTION, trajectory=False, speed_only=True,
        about="worker processes that decode and collate the training batches ahead of the step (GPU runs want "
              "4-8; null: 4, at most the CPUs, on a CUDA machine, 0 elsewhere); the same batches in the same order")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            choices, value = field.metadata["choices"], getattr(self, field.name)
            if choices is None or field.name == "report_to":
                continue
            if value not in choices:
                self._refuse(f"{field.name}={value!r} — choose one of {', '.join(choices)}")
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        if isinstance(self.report_to, str) or not all(name in TRACKERS for name in self.report_to):
            self._refuse(f"report_to={self.report_to!r} — give a list of trackers out of {', '.join(TRACKERS)} "
                         "(empty: none)")
        object.__setattr__(self, "report_to", tuple(self.report_to))
        if self.run == BASE_RUN:
            self._refuse(f"the name {BASE_RUN!r} is the model before fine-tuning — name the run otherwise")
        check_precision_attention(self.precision, self.attention, f"run {self.run!r}")
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


def _fields_where(**wanted) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(RunConfig)
                 if all(field.metadata[key] == value for key, value in wanted.items()))


# Settings beyond the recipe: a run config written before they existed reads with them off.
OPTION_FIELDS = _fields_where(kind=OPTION)
# The recipe's behaviours made settings later: a run config without them takes the recipe's value.
RECIPE_SETTING_FIELDS = _fields_where(kind=RECIPE_SETTING)
# Run fields a speed row may set (this project's best settings); the recipe's rows set none.
ROW_SETTINGS = _fields_where(speed_row=True)
NOT_TRAJECTORY = _fields_where(trajectory=False)  # fields that do not change the weights


def option_notes() -> dict[str, str]:
    """Run field -> the tables' note on the rows that turn it on (settings beyond the recipe's step)."""
    return {field.name: field.metadata["note"] for field in dataclasses.fields(RunConfig) if field.metadata["note"]}


def setting_labels() -> dict[str, str]:
    """Run field -> the few words a table says of it when it is on (speed-row settings with a `label`)."""
    return {field.name: field.metadata["label"] for field in dataclasses.fields(RunConfig)
            if field.metadata["label"]}


def load_precision(run: RunConfig) -> str:
    """The precision the base weights are loaded in (the one loading rule): the recipe loads the model in
    bf16 with flash attention and in fp32 otherwise (its fp16 rows: fp32 weights under fp16 mixed
    precision). SDPA counts as flash: this project uses it only in flash's place where flash-attn
    cannot run (the demo, CPUs); the recipe never uses it. An fp16 run loads fp32 whatever its attention."""
    return "bf16" if run.attention in ("flash_attention_2", "sdpa") and run.precision == "bf16" else "fp32"


def evaluation_precision(run: RunConfig) -> str:
    """The precision a trained run is evaluated in, as the recipe evaluates it after training.

    Full-parameter runs: the model DeepSpeed trained, cast in place to the run's precision.
    LoRA/QLoRA: the adapter on the base reloaded by the loading rule (`load_precision`, never quantised):
    bf16 with flash attention, else fp32 (so an fp16 LoRA run is evaluated in fp32).
    """
    if run.strategy.is_lora:
        return load_precision(run)
    return run.precision


def check_precision_attention(precision: str, attention: str, where: str) -> None:
    """flash-attn kernels compute in bf16 only; the recipe runs its fp16 rows with eager attention."""
    if precision == "fp16" and attention == "flash_attention_2":
        raise UserError(f"{where}: flash_attention_2 does not support fp16; use precision bf16, or "
                        "attention eager or sdpa for fp16 (the recipe uses eager)")


def speed_run(row: dict, speed: dict) -> RunConfig:
    """The run config a speed row trains with: the recipe's settings at the row's effective batch, on the
    speed section's dataset, for its `warmup + steps` steps, at its `learning_rate` (LoRA: its `lora_rank`,
    alpha twice the rank), plus the settings the row sets."""
    strategy = Strategy(row["strategy"])
    rank = speed["lora_rank"]
    lora = dict(lora_rank=rank, lora_alpha=2 * rank) if strategy.needs_rank else {}
    return RunConfig(
        dataset=speed["dataset"], run=f"speed-{row['row']}", strategy=strategy, precision=row["precision"],
        attention=row["attention"], learning_rate=speed["learning_rate"], epochs=1, num_crops=speed["num_crops"],
        batch_size=row["effective_batch"], warmup_steps=0, max_steps=speed["warmup"] + speed["steps"], **lora,
        deepspeed=row["deepspeed"],  # resolved by the workflow: the preset's `train.deepspeed`
        **{key: row[key] for key in ROW_SETTINGS if row.get(key) is not None},  # beyond the recipe
    )


def read_run_json(text: str) -> RunConfig:
    """`--run-json`: the run config as JSON text, or the path of a .json file holding it."""
    source = Path(text) if not text.lstrip().startswith("{") else None
    try:
        data = json.loads(source.read_text() if source else text)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--run-json: cannot read a run config from {text[:80]!r} ({exc}) — give JSON "
                        "text or a path to a .json file") from exc
    return RunConfig.from_dict(data)
