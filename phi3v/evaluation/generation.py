"""Greedy answers to evaluation examples, batched, and the probability of "yes" against "no"."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from phi3v.data.records import normalize_answer
from phi3v.errors import UserError
from phi3v.training.devices import to_device
from .inference import inference_dtype, precision_context

# eos: the tokenizer's eos only (the recipe's scripts); end_and_eos: also `<|end|>` (fewer tokens generated)
STOP_TOKENS = ("eos", "end_and_eos")


def stop_token_ids(processor, stop_tokens: str) -> list[int]:
    """The ids generation stops at (`STOP_TOKENS`)."""
    return [processor.tokenizer.eos_token_id] if stop_tokens == "eos" else processor.stop_token_ids


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclasses.dataclass(frozen=True)
class YesNoTokens:
    """Where the answers "yes" and "no" part: their common leading tokens (none with a whole-word
    tokenizer such as Phi's, `▁` alone with a tiny one) and the first token of each after them."""

    prefix: tuple[int, ...]
    yes: int
    no: int


def answer_token_ids(processor, answer: str) -> list[int]:
    """The tokens of `answer` as training encodes a target (`{answer}<|end|>...`, no BOS)."""
    return processor.tokenizer(answer, add_special_tokens=False)["input_ids"]


def yes_no_tokens(processor, answers: Iterable[str]) -> YesNoTokens:
    """Where "yes" and "no" part, as the dataset spells them (e.g. `Yes.`, `No.`): `answers` are the
    evaluation split's gold answers, then the training split's (a small evaluation slice may hold one
    class only; its AUROC is then undefined, not an error)."""
    spelled = {}
    for answer in answers:
        spelled.setdefault(normalize_answer(answer), answer)
    missing = [word for word in ("yes", "no") if word not in spelled]
    if missing:
        raise UserError(f"auroc needs a yes/no task, but no gold answer of the evaluation or training split is "
                        f"{' or '.join(map(repr, missing))}: set it only for yes/no datasets (Hateful Memes)")
    yes, no = answer_token_ids(processor, spelled["yes"]), answer_token_ids(processor, spelled["no"])
    common = next((i for i, (a, b) in enumerate(zip(yes, no)) if a != b), None)
    if common is None:
        raise UserError(f"auroc: the tokenizer encodes {spelled['yes']!r} and {spelled['no']!r} so that one is the "
                        "start of the other: no token tells them apart")
    return YesNoTokens(tuple(yes[:common]), yes[common], no[common])


@torch.inference_mode()
def yes_probability_after_prefix(model, inputs: dict, tokens: YesNoTokens) -> list[float]:
    """P("yes") against P("no") where their tokens part, the common prefix teacher-forced after the
    left-padded prompts: one forward, positions counted as generation counts them."""
    batch = inputs["input_ids"].shape[0]
    prefix = torch.tensor(tokens.prefix, dtype=inputs["input_ids"].dtype, device=inputs["input_ids"].device)
    prefix = prefix.expand(batch, -1)
    input_ids = torch.cat([inputs["input_ids"], prefix], dim=1)
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(prefix)], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    rest = {name: tensor for name, tensor in inputs.items() if name not in ("input_ids", "attention_mask")}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=1, **rest).logits[:, -1]  # (B, vocab)
    return logits[:, [tokens.yes, tokens.no]].float().softmax(dim=-1)[:, 0].tolist()


@torch.inference_mode()
def generate_answers(model, processor, examples: Sequence, *, num_crops: int, max_new_tokens: int,
                     batch_size: int, precision: str, device: torch.device,
                     progress: bool = True, yes_no_ids: YesNoTokens | None = None, stop_tokens: str = "eos",
                     ) -> list[str] | tuple[list[str], list[float]]:
    """Greedy answers (new tokens only, special tokens skipped) for each example, in order.

    With `yes_no_ids`, also each example's probability of "yes" against "no": the softmax over those
    two tokens of the first generated position's logits (the same forward, no extra pass), or, where
    the tokenizer starts both with the same tokens, of one forward with that prefix appended.
    """
    from phi3v.image_files import load_image

    answers: list[str] = []
    yes_probabilities: list[float] = []
    with tqdm(total=len(examples), desc="evaluate", unit="sample", disable=not progress) as bar:
        for batch in batches(examples, batch_size):
            prompts = [processor.generation_prompt(example.prompt_user) for example in batch]
            images = [[load_image(path) for path in example.image_paths] for example in batch]
            inputs = processor(text=prompts, images=images, padding_side="left", num_crops=num_crops)
            inputs = to_device(inputs, device, inference_dtype(precision, device))
            with precision_context(precision, device):
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                        eos_token_id=stop_token_ids(processor, stop_tokens),
                                        pad_token_id=processor.pad_token_id,
                                        return_dict_in_generate=True, output_logits=yes_no_ids is not None and not yes_no_ids.prefix)
            new_tokens = output.sequences[:, inputs["input_ids"].shape[1]:]  # (B, new) after left-padded prompts
            answers += processor.batch_decode(new_tokens, skip_special_tokens=True)
            if yes_no_ids is not None and not yes_no_ids.prefix:
                first = output.logits[0][:, [yes_no_ids.yes, yes_no_ids.no]].float()  # (B, 2) at the answer's start
                yes_probabilities += first.softmax(dim=-1)[:, 0].tolist()
            elif yes_no_ids is not None:
                with precision_context(precision, device):
                    yes_probabilities += yes_probability_after_prefix(model, inputs, yes_no_ids)
            bar.update(len(batch))
    return (answers, yes_probabilities) if yes_no_ids is not None else answers
