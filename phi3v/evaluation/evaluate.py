"""Evaluate a model folder on one split: batched greedy generation, then the recipe's metric.

Writes `predictions.jsonl` (id, prediction, answers, score and the other per-example scores;
sorted by id) and `scores.json` (the means, and under `per_example` every example's scores, from
which the tables compute bootstrap intervals). Besides the recipe's metric: the official ANLS
(DocVQA), AUROC from the probability of the answer "yes" (`auroc`, Hateful Memes). The protocol
`lmms_eval` instead answers the way lmms-eval's `docvqa_val` task does (its prompt, token limit, one
example at a time) and scores with its ANLS; the workflow runs it on DocVQA's validation split.
Under torchrun each process answers a slice of the split (accelerate splits and gathers); the main
process writes.

    python -m phi3v.evaluation.evaluate --model-dir results/runs/docvqa/full-bf16-sdpa/model \\
        --data-dir results/data/docvqa --dataset docvqa --split test --metric anls \\
        --out-dir results/eval/docvqa/full-bf16-sdpa --run-name full-bf16-sdpa \\
        --num-crops 16 --precision bf16 --attention sdpa --batch-size 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from phi3v.errors import UserError, entry_point
from phi3v.data.records import normalize_answer
from phi3v.evaluation.metrics import accuracy, anls_lmms_eval, anls_official, recipe_anls
from phi3v.evaluation import statistics
from phi3v.files import write_json_atomic, write_text_atomic
from phi3v.layout import PREDICTIONS, SCORES
from phi3v.training.run_config import PRECISIONS, precision_dtype

METRICS = ("anls", "accuracy")
# recipe: the recipe's prompt and the configured generation; lmms_eval: lmms-eval's `docvqa_val` (below)
PROTOCOLS = ("recipe", "lmms_eval")
# eos: the tokenizer's eos only (the recipe's scripts); end_and_eos: also `<|end|>` (fewer tokens generated)
STOP_TOKENS = ("eos", "end_and_eos")
# fp32: how the recipe evaluates an fp16 LoRA run (adapter on the base reloaded in fp32)
EVAL_PRECISIONS = PRECISIONS + ("fp32",)

# lmms-eval's `docvqa_val` task (lmms_eval/tasks/docvqa/_default_template_docvqa_yaml, 0.7): the
# question, then this post-prompt; greedy, at most 32 new tokens; one example at a time (its phi3v model).
LMMS_EVAL_POST_PROMPT = "\nAnswer the question using a single word or phrase."
LMMS_EVAL_MAX_NEW_TOKENS = 32
# phi3v.data.sources.docvqa.PROMPT_SUFFIX (a test keeps them equal): importing the converter here
# would need `datasets` in the evaluation's environment
RECIPE_DOCVQA_SUFFIX = "\nAnswer briefly."


# ---------------------------------------------------------------------------------------------
# Scoring


def score_prediction(prediction: str, answers: Sequence[str], metric: str) -> float:
    """The table's metric for one sample, in [0, 1]: the recipe's ANLS for `anls`, exact match otherwise."""
    if metric == "anls":
        return recipe_anls(prediction, answers)
    return accuracy(prediction, answers)


def percent(values: Sequence[float]) -> float:
    return round(100.0 * sum(values) / len(values), 4) if values else 0.0


def is_yes(answers: Sequence[str]) -> bool:
    """The positive class of a yes/no task (Hateful Memes: hateful): the first gold answer is "yes"."""
    return normalize_answer(answers[0]) == "yes"


# Values of a predictions row that `scores.json` keeps under `per_example` (those the rows have),
# for the tables' bootstrap intervals.
PER_EXAMPLE = ("id", "score", "anls_official", "p_yes")


def summarize(
    predictions: Sequence[dict], *, metric: str, majority: str | None, dataset: str, run: str, split: str,
    protocol: str = "recipe",
) -> dict:
    """`scores.json` from scored predictions; the majority baseline (when given) goes through the same scoring.
    Under the lmms_eval protocol `score` is lmms-eval's ANLS (also as `anls_lmms_eval`)."""
    answers = [p["answers"] for p in predictions]
    scores = {
        "dataset": dataset,
        "run": run,
        "split": split,
        "protocol": protocol,
        "metric": metric,
        "score": percent([p["score"] for p in predictions]),
    }
    if protocol == "lmms_eval":
        scores["anls_lmms_eval"] = scores["score"]
    elif metric == "anls":
        scores["anls_recipe"] = scores["score"]
        scores["anls_official"] = percent([p["anls_official"] for p in predictions])
    if predictions and "p_yes" in predictions[0]:
        value = statistics.auroc([p["p_yes"] for p in predictions], [is_yes(a) for a in answers])
        scores["auroc"] = None if value is None else round(100.0 * value, 4)
    scores["accuracy"] = percent([accuracy(p["prediction"], a) for p, a in zip(predictions, answers)])
    if majority is not None:
        majority_scores = [round(score_prediction(majority, a, metric), 6) for a in answers]
        scores["majority_baseline"] = percent(majority_scores)
        scores["majority_answer"] = majority
    scores["n"] = len(predictions)
    scores["per_example"] = {key: [p[key] for p in predictions] for key in PER_EXAMPLE
                             if predictions and key in predictions[0]}
    if majority is not None:
        scores["per_example"]["majority_baseline"] = majority_scores
    if "p_yes" in scores["per_example"]:
        scores["per_example"]["is_yes"] = [is_yes(a) for a in answers]
    return scores


def summary(scores: dict) -> dict:
    """`scores.json` without the per-example lists, for printing."""
    return {key: value for key, value in scores.items() if key != "per_example"}


def scored_predictions(ids: Sequence[str], predictions: Sequence[str], answers: Sequence[Sequence[str]],
                       metric: str, yes_probabilities: Sequence[float] | None = None,
                       protocol: str = "recipe") -> list[dict]:
    """The rows of `predictions.jsonl`, sorted by id: the recipe's score, the official ANLS
    (anls) and the probability of "yes" (when given); under the lmms_eval protocol lmms-eval's ANLS."""
    rows = []
    for index, (i, p, a) in enumerate(zip(ids, predictions, answers)):
        if protocol == "lmms_eval":
            rows.append({"id": i, "prediction": p, "answers": list(a), "score": round(anls_lmms_eval(p, a), 6)})
            continue
        row = {"id": i, "prediction": p, "answers": list(a), "score": round(score_prediction(p, a, metric), 6)}
        if metric == "anls":
            row["anls_official"] = round(anls_official(p, a), 6)
        if yes_probabilities is not None:
            row["p_yes"] = round(float(yes_probabilities[index]), 6)
        rows.append(row)
    return sorted(rows, key=lambda row: row["id"])


# ---------------------------------------------------------------------------------------------
# Answers from several processes


def merge_answers(rows: Sequence[dict]) -> list[dict]:
    """Every process's rows sorted by id; a repeated id means a sample was answered twice."""
    rows = sorted(rows, key=lambda row: row["id"])
    for before, after in zip(rows, rows[1:]):
        if before["id"] == after["id"]:
            raise ValueError(f"sample {before['id']!r} was answered twice")
    return rows


# ---------------------------------------------------------------------------------------------
# Model and generation


def check_arguments(*, metric: str, precision: str, batch_size: int, max_new_tokens: int,
                    max_samples: int | None, protocol: str = "recipe", stop_tokens: str = "eos") -> None:
    """Refuse bad settings before any work (the model checks the attention kernel itself)."""
    if metric not in METRICS:
        raise UserError(f"metric = {metric!r} is not known: use one of {', '.join(METRICS)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol = {protocol!r} is not known: use one of {', '.join(PROTOCOLS)}")
    if protocol == "lmms_eval" and metric != "anls":
        raise UserError(f"protocol lmms_eval needs metric anls (lmms-eval's DocVQA protocol), not {metric!r}: "
                        "use it on DocVQA data only")
    if stop_tokens not in STOP_TOKENS:
        raise UserError(f"stop_tokens = {stop_tokens!r} is not known: use one of {', '.join(STOP_TOKENS)}")
    if precision not in EVAL_PRECISIONS:
        raise UserError(f"precision = {precision!r} is not known: use one of {', '.join(EVAL_PRECISIONS)}")
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} = {value!r} is not valid: give a positive integer")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise UserError(f"max_samples = {max_samples!r} is not valid: give a positive integer or none")


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Half-precision weights on GPU; on CPU fp32 weights under autocast (see `precision_context`)."""
    return precision_dtype(precision) if device.type == "cuda" and precision != "fp32" else torch.float32


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """On CPU, compute in the run's precision with autocast (fp16 included) rather than in fp32."""
    if device.type == "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cpu", dtype=precision_dtype(precision))


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


def lmms_eval_prompt(prompt_user: str) -> str:
    """lmms-eval's DocVQA prompt from the recipe's: the question (after its image tags) and lmms-eval's post-prompt."""
    return prompt_user.removesuffix(RECIPE_DOCVQA_SUFFIX) + LMMS_EVAL_POST_PROMPT


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
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(inference_dtype(precision, device))
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


# ---------------------------------------------------------------------------------------------
# Entry point


def write_outputs(out_dir: Path, rows: Sequence[dict], scores: dict) -> None:
    """Both files atomically: a crash leaves no file that looks finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text_atomic(out_dir / PREDICTIONS, jsonl)
    write_json_atomic(out_dir / SCORES, scores)


def evaluate(
    *,
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    dataset_name: str,
    split: str,
    metric: str,
    out_dir: str | os.PathLike,
    run_name: str,
    num_crops: int,
    precision: str,
    attention: str,
    batch_size: int = 1,
    max_new_tokens: int = 64,
    max_samples: int | None = None,
    auroc: bool = False,
    protocol: str = "recipe",
    stop_tokens: str = "eos",
    quantization_config=None,
    progress: bool = True,
) -> dict:
    """Answer every sample of `<data_dir>/<dataset_name>_<split>.jsonl` and score the answers.

    `auroc`: also the probability of "yes" per example and the AUROC (yes/no tasks).
    `protocol="lmms_eval"`: answer with lmms-eval's DocVQA prompt, its token limit and the tokenizer's eos,
    one example at a time (those arguments are the protocol's), scored with its ANLS; the split needs no
    train split beside it (no majority baseline). Returns the `scores.json` dict (on every process).
    """
    from phi3v.data.dataset import load_eval_examples, majority_answer
    from phi3v.data.records import read_records, split_path

    # Under torchrun this joins the process group (NCCL on GPUs, gloo on CPUs); alone it is one process.
    state = PartialState()
    check_arguments(metric=metric, precision=precision, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, max_samples=max_samples, protocol=protocol,
                    stop_tokens=stop_tokens)
    lmms = protocol == "lmms_eval"
    if lmms:  # lmms-eval's docvqa_val: one example at a time, its token limit, the tokenizer's eos
        batch_size, max_new_tokens, stop_tokens = 1, LMMS_EVAL_MAX_NEW_TOKENS, "eos"
    eval_jsonl = split_path(data_dir, dataset_name, split)
    train_jsonl = split_path(data_dir, dataset_name, "train")
    for path in (eval_jsonl,) if lmms else (eval_jsonl, train_jsonl):
        if not path.is_file():
            raise UserError(f"{path} does not exist: prepare the dataset {dataset_name!r} first")
    examples = load_eval_examples(eval_jsonl, Path(data_dir) / "images", max_samples)
    if not examples:
        raise UserError(f"{eval_jsonl} has no records: there is nothing to evaluate")
    if lmms:
        examples = [dataclasses.replace(e, prompt_user=lmms_eval_prompt(e.prompt_user)) for e in examples]
    majority = None if lmms else majority_answer(train_jsonl)

    model, processor = load_model(model_dir, precision, attention, state.device, quantization_config)
    if auroc:
        train_answers = [record.conversations[0].assistant for record in read_records(train_jsonl)]
        yes_no_ids = yes_no_tokens(processor, [a for e in examples for a in e.answers] + train_answers)
    else:
        yes_no_ids = None
    generation = dict(num_crops=num_crops, precision=precision, device=state.device,
                      progress=progress and state.is_main_process)
    with state.split_between_processes(examples) as mine:  # a contiguous slice per process
        predictions = generate_answers(model, processor, mine, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       yes_no_ids=yes_no_ids, stop_tokens=stop_tokens, **generation)
        predictions, yes_probabilities = predictions if auroc else (predictions, None)
        rows = scored_predictions([e.id for e in mine], predictions, [e.answers for e in mine], metric,
                                  yes_probabilities, protocol)

    # Every process gets every row, so each returns the same scores; the main process writes them.
    merged = merge_answers(gather_object(rows))
    scores = summarize(merged, metric=metric, majority=majority, dataset=dataset_name, run=run_name, split=split,
                       protocol=protocol)
    if state.is_main_process:
        write_outputs(Path(out_dir), merged, scores)
    state.wait_for_everyone()
    return scores


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from phi3v.modeling_phi3v import ATTENTION_IMPLEMENTATIONS

    parser = argparse.ArgumentParser(prog="python -m phi3v.evaluation.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", required=True, help="dataset name: files are <name>_<split>.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--metric", required=True, choices=METRICS)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--num-crops", type=int, required=True)
    parser.add_argument("--precision", required=True, choices=EVAL_PRECISIONS)
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION_IMPLEMENTATIONS)
    parser.add_argument("--batch-size", type=int, default=1, help="the recipe's: 1 (default)")
    parser.add_argument("--stop-tokens", default="eos", choices=STOP_TOKENS,
                        help="eos: the tokenizer's eos only, as the recipe (default); end_and_eos: also <|end|>")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--auroc", action="store_true", help='also the AUROC of the probability of "yes" (yes/no tasks)')
    parser.add_argument("--protocol", default="recipe", choices=PROTOCOLS,
                        help="lmms_eval: lmms-eval's docvqa_val (its prompt, batch 1, 32 new tokens, eos, its ANLS)")
    return parser.parse_args(argv)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scores = evaluate(
        model_dir=args.model_dir, data_dir=args.data_dir, dataset_name=args.dataset,
        split=args.split, metric=args.metric, out_dir=args.out_dir, run_name=args.run_name,
        num_crops=args.num_crops, precision=args.precision, attention=args.attention,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        max_samples=args.max_samples, auroc=args.auroc, protocol=args.protocol, stop_tokens=args.stop_tokens,
    )
    if PartialState().is_main_process:
        print(json.dumps(summary(scores), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
