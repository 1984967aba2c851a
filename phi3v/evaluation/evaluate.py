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
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from accelerate import PartialState
from accelerate.utils import gather_object

from phi3v.errors import UserError, entry_point
from phi3v.files import write_json_atomic, write_text_atomic
from phi3v.layout import PREDICTIONS, SCORES
from .generation import STOP_TOKENS, generate_answers, yes_no_tokens
from .inference import EVAL_PRECISIONS, load_model
from .scoring import METRIC_NAMES, merge_answers, scored_predictions, summarize, summary

# recipe: the recipe's prompt and the configured generation; lmms_eval: lmms-eval's `docvqa_val` (below)
PROTOCOLS = ("recipe", "lmms_eval")

# lmms-eval's `docvqa_val` task (lmms_eval/tasks/docvqa/_default_template_docvqa_yaml, 0.7): the
# question, then this post-prompt; greedy, at most 32 new tokens; one example at a time (its phi3v model).
LMMS_EVAL_POST_PROMPT = "\nAnswer the question using a single word or phrase."
LMMS_EVAL_MAX_NEW_TOKENS = 32
# phi3v.data.sources.docvqa.PROMPT_SUFFIX (a test keeps them equal): importing the converter here
# would need `datasets` in the evaluation's environment
RECIPE_DOCVQA_SUFFIX = "\nAnswer briefly."


def check_arguments(*, metric: str, precision: str, batch_size: int, max_new_tokens: int,
                    max_samples: int | None, protocol: str = "recipe", stop_tokens: str = "eos") -> None:
    """Refuse bad settings before any work (the model checks the attention kernel itself)."""
    if metric not in METRIC_NAMES:
        raise UserError(f"metric = {metric!r} is not known: use one of {', '.join(METRIC_NAMES)}")
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


def lmms_eval_prompt(prompt_user: str) -> str:
    """lmms-eval's DocVQA prompt from the recipe's: the question (after its image tags) and lmms-eval's post-prompt."""
    return prompt_user.removesuffix(RECIPE_DOCVQA_SUFFIX) + LMMS_EVAL_POST_PROMPT


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
    parser.add_argument("--metric", required=True, choices=METRIC_NAMES)
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
