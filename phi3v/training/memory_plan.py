"""Per-GPU peak memory of a training run from the model's shapes, before anything runs (`phi3v plan`,
and the workflow's refusal at `snakemake -n`). No torch: Snakemake imports this while planning.

Bytes per GPU, with P the parameters of the model as it trains, T the trainable ones, N the processes:

- weights: DeepSpeed casts the whole module to 16 bits (2P); runs without it keep what `load_dtype`
  loads (LoRA: 2 bytes with flash attention in bf16, else 4; full/frozen without DeepSpeed: 4), QLoRA's
  Linear weights are NF4 (half a byte plus an fp32 absmax per 64), LoRA adapters counted as fp32 (an
  upper bound: `adapter_dtype: base` keeps them in the base weights' dtype).
- ZeRO-2 (DeepSpeed, full-parameter runs): the 16-bit gradient partition (2T/N), the fp32 master weights
  and AdamW's two moments, partitioned (12T/N); at the optimiser step the fp32 gradient partition (4T/N)
  and one AdamW temporary of the moments' size, sqrt(exp_avg_sq) (4T/N; the foreach kernel's, a margin
  for CUDA's fused one); the reduce buckets: two of
  `reduce_bucket_size` 16-bit elements with `overlap_comm` (DeepSpeed's double buffer), 1.86 GiB at 5e8.
- without DeepSpeed: gradients (T in the parameters' dtype), AdamW's two moments and the foreach
  temporary in the same dtype, and DDP's gradient buckets (one more copy of the gradients) over several processes.
- activations (16-bit compute), per token of a micro-batch: each Phi-3 decoder layer saves
  30h + 8i + 4 heads + 8 bytes with flash/SDPA attention (measured per op on the layer: norms keep an fp32
  and a 16-bit copy, the MLP 4 i-wide tensors), eager attention also saves the fp32 softmax and its
  16-bit copy (6 heads T bytes) but not the kernels' log-sum-exp. A CLIP layer saves 16c + 6i + 4 heads + 8.
  With activation checkpointing a layer keeps only its input (2h) and one layer is recomputed at a time.
  Eager attention's backward also holds the fp32 gradient of one layer's softmax (4 heads T^2 a sample).
  CLIP saves nothing where no vision weight trains (frozen_vision, LoRA on the LM only).

Peak = weights + gradients + optimiser state + buckets + the larger of (activations, step temporaries).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from phi3v.model_sizes import NF4_BLOCK, ModelSizes
from .run_config import RunConfig, Strategy, load_precision

GIB = 2**30
# DeepSpeed ZeRO-2's bucket sizes in elements (the recipe's config; `model_setup.deepspeed_config` uses them)
ZERO2_BUCKET_ELEMENTS = int(5e8)
ZERO2_OVERLAP_COMM = True  # the recipe's; DeepSpeed then double-buffers the reduce bucket
# The CUDA context, cuBLAS/flash workspaces and allocator fragmentation a card does not give to tensors
CARD_RESERVE_GIB = 1.5
# Tokens of a sample besides its images: chat template, question, answer (the recipe's answers are short;
# NLVR2's later turns and UCF-101's class list fit too), and the supervised answer tokens the LM head computes
TEXT_TOKENS = 256
ANSWER_TOKENS = 64
# Images a sample holds per task (REFERENCE §1); a custom dataset is planned with one
IMAGES_PER_SAMPLE = {"docvqa": 1, "docvqa_full": 1, "hateful_memes": 1, "nlvr2": 2, "ucf101": 8}


def candidate_batches(batch_size: int, world_size: int, largest: int | None = None) -> list[int]:
    """Per-device batches that divide this process's share of the effective batch, largest first."""
    share = batch_size // world_size
    return [b for b in range(share, 0, -1) if share % b == 0 and (largest is None or b <= largest)]


@dataclass(frozen=True)
class SampleShape:
    """The longest sample of a dataset: LM tokens and CLIP crops."""

    tokens: int
    crops: int

    @classmethod
    def of(cls, sizes: ModelSizes, num_crops: int, images: int) -> "SampleShape":
        image_tokens, crops = sizes.image_tokens(num_crops)
        return cls(tokens=images * image_tokens + TEXT_TOKENS, crops=images * crops)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU holds at the peak of a training step, by kind."""

    weights: int
    gradients: int
    optimizer: int
    buckets: int
    step_temporaries: int
    activations: int

    @property
    def peak(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.buckets
                + max(self.activations, self.step_temporaries))

    def gib(self) -> dict:
        return {key: round(value / GIB, 2) for key, value in {**dataclasses.asdict(self), "peak": self.peak}.items()}


def training_state_bytes(trainable: int, world_size: int, *, deepspeed: bool, param_bytes: int = 4) -> dict:
    """Gradients, optimiser state, buckets and step temporaries of `trainable` parameters (see the module doc).

    `param_bytes`: the trainable parameters' element size without DeepSpeed (fp32 master weights: 4).
    """
    if deepspeed:  # ZeRO-2 partitions gradients and optimiser state over the processes
        share = -(-trainable // world_size)
        buckets = ZERO2_BUCKET_ELEMENTS * 2 * (2 if ZERO2_OVERLAP_COMM else 1)
        return {"gradients": 2 * share, "optimizer": 12 * share, "buckets": buckets,
                "step_temporaries": 4 * share + 4 * share}
    ddp_buckets = param_bytes * trainable if world_size > 1 else 0
    return {"gradients": param_bytes * trainable, "optimizer": 2 * param_bytes * trainable, "buckets": ddp_buckets,
            "step_temporaries": param_bytes * trainable}


def weight_bytes(sizes: ModelSizes, run: RunConfig) -> int:
    """Bytes of the model's weights on one GPU, as the run loads them."""
    params = sizes.training_params
    if run.deepspeed:
        return 2 * params
    loaded = 2 if run.strategy.is_lora and load_precision(run) == "bf16" else 4
    if not run.strategy.is_lora:
        return loaded * params
    adapters = 4 * sizes.lora_params(run.lora_rank, run.lora_on_vision)
    if run.strategy is Strategy.QLORA:
        nf4 = sizes.nf4_params()
        return nf4 // 2 + 4 * (nf4 // NF4_BLOCK) + loaded * (params - nf4) + adapters
    return loaded * params + adapters


def decoder_layer_bytes(sizes: ModelSizes, tokens: int, eager: bool) -> int:
    """Activations one Phi-3 decoder layer saves for backward, per sample of `tokens` tokens (16-bit)."""
    h, heads = sizes.hidden, sizes.heads
    per_token = 30 * h + 8 * sizes.intermediate + 4 * heads + 8
    if eager:  # the fp32 softmax and its 16-bit copy instead of the kernels' log-sum-exp
        per_token += 6 * heads * tokens - 2 * h - 4 * heads
    return per_token * tokens


def clip_layer_bytes(sizes: ModelSizes, crops: int, eager: bool) -> int:
    """Activations one CLIP layer saves for backward, for `crops` crops (16-bit)."""
    tokens, heads = sizes.clip_tokens_per_crop, sizes.clip_heads
    per_token = 16 * sizes.clip_hidden + 6 * sizes.clip_intermediate + 4 * heads + 8
    if eager:
        per_token += 6 * heads * tokens - 4 * heads
    return per_token * tokens * crops


def stack_bytes(layers: int, checkpointed: int, layer: int, layer_input: int) -> int:
    """Saved activations of `layers` layers of which the first `checkpointed` keep only their input
    (and are recomputed one at a time in backward)."""
    recompute = layer if checkpointed else 0
    return checkpointed * layer_input + (layers - checkpointed) * layer + recompute


def activation_bytes(sizes: ModelSizes, run: RunConfig, sample: SampleShape, micro_batch: int,
                     checkpointing: bool, answer_tokens: int = ANSWER_TOKENS) -> int:
    """Activations saved for backward by one micro-batch (checkpointing: every layer, or `checkpointed_layers`);
    the LM head runs on the `answer_tokens` supervised tokens of a sample only."""
    eager = run.attention == "eager"
    tokens = sample.tokens
    decoder_checkpointed = (sizes.layers if run.checkpointed_layers is None
                            else min(run.checkpointed_layers, sizes.layers)) if checkpointing else 0
    lm = stack_bytes(sizes.layers, decoder_checkpointed, decoder_layer_bytes(sizes, tokens, eager),
                     2 * sizes.hidden * tokens)
    head = answer_tokens * sizes.vocab * (2 + 4 + 4)  # 16-bit logits, their fp32 copy and its gradient
    # backward of one eager layer at a time holds the fp32 gradient of its softmax; flash kernels tile it
    lm += 4 * sizes.heads * tokens**2 if eager else 0
    vision = 0
    if run.strategy.trains_vision and not (run.strategy.is_lora and not run.lora_on_vision):
        clip_input = 2 * sizes.clip_hidden * sizes.clip_tokens_per_crop * sample.crops
        vision = stack_bytes(sizes.clip_layers_used, sizes.clip_layers_used if checkpointing else 0,
                             clip_layer_bytes(sizes, sample.crops, eager), clip_input)
        merged = sizes.tokens_per_crop_side**2 * sample.crops
        vision += 2 * merged * (4 * sizes.clip_hidden + 2 * sizes.hidden)  # projector: input, GELU in and out
    return micro_batch * (lm + head + vision)


def estimate(sizes: ModelSizes, run: RunConfig, sample: SampleShape, world_size: int, *,
             micro_batch: int | None = None, checkpointing: bool | None = None) -> MemoryEstimate:
    """Per-GPU bytes of `run` on `world_size` processes (micro-batch and checkpointing: the run's, unless given)."""
    micro_batch = run.per_device_batch_size if micro_batch is None else micro_batch
    checkpointing = run.gradient_checkpointing if checkpointing is None else checkpointing
    trainable = sizes.trainable_params(run.strategy.value, lora_rank=run.lora_rank, lora_on_vision=run.lora_on_vision,
                                       freeze_token_embeddings=run.freeze_token_embeddings)
    state = training_state_bytes(trainable, world_size, deepspeed=run.deepspeed)
    return MemoryEstimate(weights=weight_bytes(sizes, run), **state,
                          activations=activation_bytes(sizes, run, sample, micro_batch, checkpointing))


# ---------------------------------------------------------------------------------------------
# The plan: one row per training run and speed row


@dataclass(frozen=True)
class PlanRow:
    name: str  # `<dataset>/<run>` or `speed/<row>`
    run: RunConfig
    sample: SampleShape
    world_size: int
    estimate: MemoryEstimate
    without_checkpointing: MemoryEstimate
    largest_micro_batch: int | None  # the largest that fits (None: not even 1)
    fits: bool
    fix: str | None  # the change that would make it fit

    def line(self, card_gib: float) -> str:
        """One console line: the row, its peak, and what to change."""
        peak = self.estimate.peak / GIB
        verdict = "fits" if self.fits else f"does not fit: {self.fix}"
        return (f"{self.name}: {peak:.1f} GiB a GPU at per-device batch {self.run.per_device_batch_size} on "
                f"{self.world_size} x {card_gib:.4g} GiB — {verdict}")


def _fits(estimate: MemoryEstimate, card_gib: float) -> bool:
    return estimate.peak <= (card_gib - CARD_RESERVE_GIB) * GIB


def _fix(sizes: ModelSizes, run: RunConfig, sample: SampleShape, world_size: int, card_gib: float,
         gpus_per_node: int) -> str:
    # more GPUs: up to 8 on one machine, beyond that whole nodes of `gpus_per_node`
    """The smallest change that makes a run fit: checkpointing, a smaller micro-batch, more GPUs, a fused
    attention kernel, LoRA or QLoRA; else the card it needs."""
    if not run.gradient_checkpointing and _fits(estimate(sizes, run, sample, world_size, checkpointing=True), card_gib):
        return "set gradient_checkpointing: true"
    for batch in candidate_batches(run.batch_size, world_size, run.per_device_batch_size - 1):
        if _fits(estimate(sizes, run, sample, world_size, micro_batch=batch, checkpointing=True), card_gib):
            return f"set per_device_batch_size: {batch}" + ("" if run.gradient_checkpointing else
                                                            " with gradient_checkpointing: true")
    if run.deepspeed:
        for gpus in (2, 4, 8, 16, 32, 64):
            if gpus > world_size and run.batch_size % gpus == 0 and _fits(
                    estimate(sizes, run, sample, gpus, micro_batch=1, checkpointing=True), card_gib):
                where = (f"gpus_per_node: {gpus}" if gpus <= max(gpus_per_node, 8)
                         else f"gpus_per_node: {gpus_per_node}, nodes: {-(-gpus // gpus_per_node)}")
                return f"{gpus} GPUs, over which ZeRO-2 partitions the optimiser state (`hardware={{{where}}}`)"
    if run.attention == "eager":
        kernel = dataclasses.replace(run, attention="sdpa")
        if _fits(estimate(sizes, kernel, sample, world_size, micro_batch=1, checkpointing=True), card_gib):
            return "set attention: sdpa (its fused kernels never hold the tokens x tokens attention scores)"
    for strategy in ("lora", "qlora"):
        if run.strategy is Strategy.QLORA or (strategy == "lora" and run.strategy is Strategy.LORA):
            continue
        changed = dataclasses.replace(run, strategy=Strategy(strategy), deepspeed=False,
                                      lora_rank=run.lora_rank or 64, lora_alpha=run.lora_alpha or 128,
                                      per_device_batch_size=1, gradient_checkpointing=True, checkpointed_layers=None)
        if _fits(estimate(sizes, changed, sample, world_size), card_gib):
            return f"strategy {strategy} (rank {changed.lora_rank})"
    smallest = estimate(sizes, run, sample, world_size, micro_batch=1, checkpointing=True).peak / GIB
    return f"a card with at least {smallest + CARD_RESERVE_GIB:.0f} GiB, or a shorter sequence (num_crops)"


def plan_row(name: str, sizes: ModelSizes, run: RunConfig, sample: SampleShape, world_size: int,
             card_gib: float, gpus_per_node: int) -> PlanRow:
    """How `run` sits on `world_size` GPUs of `card_gib` GiB each."""
    planned = estimate(sizes, run, sample, world_size)
    fitting = [batch for batch in candidate_batches(run.batch_size, world_size)
               if _fits(estimate(sizes, run, sample, world_size, micro_batch=batch), card_gib)]
    fits = _fits(planned, card_gib)
    return PlanRow(name=name, run=run, sample=sample, world_size=world_size, estimate=planned,
                   without_checkpointing=estimate(sizes, run, sample, world_size, checkpointing=False),
                   largest_micro_batch=fitting[0] if fitting else None, fits=fits,
                   fix=None if fits else _fix(sizes, run, sample, world_size, card_gib, gpus_per_node))


def markdown_table(rows: list[PlanRow], card_gib: float) -> str:
    """The plan as a Markdown table (GiB a GPU), one line per row."""
    header = ("| row | GPUs | batch/GPU | seq (tokens, crops) | weights | grads | optimizer (ZeRO-2: /N) | buckets "
              "| step temp. | activations (ckpt / none) | peak | largest batch/GPU | fits |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        e, no_ckpt = row.estimate.gib(), row.without_checkpointing.gib()
        checkpointing = "on" if row.run.gradient_checkpointing else "off"
        verdict = "fits" if row.fits else f"**does not fit**: {row.fix}"
        lines.append(
            f"| {row.name} | {row.world_size} | {row.run.per_device_batch_size} | {row.sample.tokens}, {row.sample.crops} "
            f"| {e['weights']} | {e['gradients']} | {e['optimizer']} | {e['buckets']} | {e['step_temporaries']} "
            f"| {e['activations'] if row.run.gradient_checkpointing else '-'} / {no_ckpt['activations']} "
            f"| {e['peak']} (ckpt {checkpointing}) | {row.largest_micro_batch or 'none'} | {verdict} |")
    return "\n".join(lines) + f"\n\nGiB per GPU on {card_gib:.4g} GiB cards, {CARD_RESERVE_GIB} GiB kept for the CUDA context.\n"
