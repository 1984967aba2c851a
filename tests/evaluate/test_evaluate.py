"""Evaluation: scoring, answers from several processes, the CLI, and a run on a tiny model folder."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from phi3v.errors import UserError
from phi3v.evaluation.evaluate import check_arguments, evaluate, main
from phi3v.evaluation.inference import autocast_dtype, inference_dtype, precision_context
from phi3v.evaluation.scoring import merge_answers, scored_predictions, summarize

SCORES_FIELDS = {"dataset", "run", "split", "metric", "score", "accuracy", "majority_baseline", "n"}


def test_gathered_answers_are_sorted_by_id():
    rows = [{"id": f"test-{i:010d}", "prediction": str(i)} for i in range(11)]
    gathered = rows[8:] + rows[4:8] + rows[:4]  # slices in the order the processes return them
    assert merge_answers(gathered) == rows


def test_merge_refuses_a_sample_answered_twice():
    with pytest.raises(ValueError, match="answered twice"):
        merge_answers([{"id": "a"}, {"id": "a"}])


def test_gold_answers_score_100_and_majority_baseline():
    answers = [["yes"], ["no"], ["yes"], ["yes"]]
    rows = scored_predictions(["d", "b", "c", "a"], ["Yes.", "no", "yes", "yes"], answers, "accuracy")
    assert [row["id"] for row in rows] == ["a", "b", "c", "d"]
    assert set(rows[0]) == {"id", "prediction", "answers", "score"}
    scores = summarize(rows, metric="accuracy", majority="yes", dataset="hm", run="base", split="test")
    assert SCORES_FIELDS <= set(scores) and "anls_recipe" not in scores and "auroc" not in scores
    assert scores["per_example"] == {"id": ["a", "b", "c", "d"], "score": [1.0] * 4,
                                     "majority_baseline": [1.0, 0.0, 1.0, 1.0]}
    assert scores["score"] == 100.0 and scores["n"] == 4
    assert scores["majority_baseline"] == 75.0


def test_anls_scores_report_both_definitions():
    answers = [["Paris", "paris city"], ["42"]]
    rows = scored_predictions(["q1", "q2"], ["paris", "42."], answers, "anls")
    scores = summarize(rows, metric="anls", majority="42", dataset="docvqa", run="r", split="test")
    # official: "paris" = "paris" (1); "42." vs "42": the dot stays, 1 edit over 3 characters (2/3)
    assert scores["anls_official"] == pytest.approx(100 * (1 + 2 / 3) / 2, abs=1e-4)
    assert [row["anls_official"] for row in rows] == [1.0, pytest.approx(2 / 3, abs=1e-6)]
    assert scores["per_example"] == {"id": ["q1", "q2"], "score": [0.8, 1.0],
                                     "anls_official": [1.0, round(2 / 3, 6)], "majority_baseline": [0.0, 1.0]}
    assert scores["score"] == scores["anls_recipe"] == pytest.approx(100 * (0.8 + 1.0) / 2)
    assert scores["majority_baseline"] == 50.0
    assert scores["accuracy"] == 100.0  # exact match lower-cases, so "paris" matches "Paris"


def test_auroc_from_the_probability_of_yes():
    answers = [["Yes."], ["No."], ["yes"], ["no"]]
    rows = scored_predictions(["a", "b", "c", "d"], ["Yes.", "Yes.", "No.", "No."], answers, "accuracy",
                              yes_probabilities=[0.9, 0.6, 0.6, 0.2])
    scores = summarize(rows, metric="accuracy", majority="no", dataset="hm", run="r", split="test")
    # pairs (yes, no): (0.9, 0.6) 1, (0.9, 0.2) 1, (0.6, 0.6) tie 0.5, (0.6, 0.2) 1 -> 3.5 / 4
    assert scores["auroc"] == 87.5 and scores["accuracy"] == 50.0
    assert scores["per_example"]["p_yes"] == [0.9, 0.6, 0.6, 0.2]
    assert scores["per_example"]["is_yes"] == [True, False, True, False]


def test_bad_arguments_are_user_errors():
    good = dict(metric="anls", precision="bf16", batch_size=2, max_new_tokens=8, max_samples=None)
    check_arguments(**good)
    for key, value in [("metric", "bleu"), ("precision", "fp8"), ("batch_size", 0),
                       ("max_new_tokens", True), ("max_samples", 0)]:
        with pytest.raises(UserError, match=key):
            check_arguments(**{**good, key: value})
    with pytest.raises(UserError, match="protocol lmms_eval needs metric anls"):
        check_arguments(**{**good, "metric": "accuracy", "protocol": "lmms_eval"})


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cpu_generation_runs_in_the_requested_precision(precision, dtype):
    with precision_context(precision, torch.device("cpu")):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == dtype


@pytest.mark.parametrize("precision, on_gpu, autocast", [
    ("bf16", torch.bfloat16, torch.bfloat16), ("fp16", torch.float16, torch.float16), ("fp32", torch.float32, None)])
def test_weights_take_the_precisions_dtype_on_gpu_and_fp32_on_cpu(precision, on_gpu, autocast):
    assert inference_dtype(precision, torch.device("cuda", 0)) == on_gpu
    assert inference_dtype(precision, torch.device("cpu")) == torch.float32
    assert autocast_dtype(precision) == autocast


def test_cli_prints_user_errors_without_traceback(tmp_path, capsys):
    code = main(["--model-dir", str(tmp_path), "--data-dir", str(tmp_path / "nowhere"),
                 "--dataset", "docvqa", "--metric", "anls", "--out-dir", str(tmp_path / "out"),
                 "--run-name", "base", "--num-crops", "1", "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "docvqa_test.jsonl does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# End to end on a tiny model folder


def write_tiny_dataset(folder):
    """Three DocVQA-style records (one with two gold answers) and a two-record train split."""
    images = folder / "images"
    images.mkdir(parents=True)
    colors = [(250, 250, 250), (10, 120, 200), (200, 30, 30)]
    for index, color in enumerate(colors):
        Image.new("RGB", (48 + 8 * index, 40), color).save(images / f"page{index}.png")

    def record(rid, image, question, answer, answers=None):
        data = {"id": rid, "source": "docvqa",
                "conversations": [{"images": [image], "user": f"{question}\nAnswer briefly.",
                                   "assistant": answer}]}
        if answers:
            data["answers"] = answers
        return json.dumps(data) + "\n"

    (folder / "docvqa_test.jsonl").write_text(
        record("test-0000000002", "page2.png", "What is the total?", "42")
        + record("test-0000000000", "page0.png", "Who signed it?", "Ann Lee", ["Ann Lee", "A. Lee"])
        + record("test-0000000001", "page1.png", "What is the date?", "May 3")
    )
    (folder / "docvqa_train.jsonl").write_text(
        record("train-0000000000", "page0.png", "Who signed it?", "Ann Lee")
        + record("train-0000000001", "page1.png", "Who signed it?", "Ann Lee")
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from phi3v.training import demo_model as pretrain

    folder = tmp_path_factory.mktemp("model")
    texts = ["Who signed it? Answer briefly. Ann Lee", "What is the total? 42", "What is the date? May 3",
             *["Yes. No."] * 4]
    pretrain.write_random_base(folder, texts=texts, vocab_size=300, seed=0)
    return folder


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_evaluate_end_to_end_on_a_tiny_model(tiny_model, tmp_path, precision):
    data = tmp_path / "data"
    write_tiny_dataset(data)
    out = tmp_path / "eval"
    scores = evaluate(model_dir=tiny_model, data_dir=data, dataset_name="docvqa", split="test",
                      metric="anls", out_dir=out, run_name="base", num_crops=1, precision=precision,
                      attention="sdpa", batch_size=2, max_new_tokens=4)
    assert json.loads((out / "scores.json").read_text()) == scores
    assert SCORES_FIELDS | {"anls_recipe", "anls_official"} <= set(scores)
    assert (scores["dataset"], scores["run"], scores["split"], scores["n"]) == ("docvqa", "base", "test", 3)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"test-000000000{i}" for i in range(3)]
    assert rows[0]["answers"] == ["Ann Lee", "A. Lee"]
    assert all(isinstance(row["prediction"], str) and 0 <= row["score"] <= 1 for row in rows)
    assert scores["score"] == pytest.approx(100 * sum(row["score"] for row in rows) / 3, abs=1e-3)
    assert scores["majority_answer"] == "Ann Lee"
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_lmms_eval_protocol_answers_the_converted_validation_split_on_a_tiny_model(tiny_model, tmp_path, monkeypatch):
    from phi3v.data.sources import docvqa
    from phi3v.evaluation import evaluate as evaluation
    from phi3v.evaluation.evaluate import RECIPE_DOCVQA_SUFFIX, lmms_eval_prompt
    from phi3v.evaluation.metrics import anls_lmms_eval

    assert RECIPE_DOCVQA_SUFFIX == docvqa.PROMPT_SUFFIX  # the converter's prompt, which lmms-eval's replaces
    assert lmms_eval_prompt("<|image_1|>\nWhat is the total?\nAnswer briefly.") == (
        "<|image_1|>\nWhat is the total?\nAnswer the question using a single word or phrase.")
    # DocVQA validation as the workflow converts it (lmms-eval's hub layout; a validation split alone)
    docvqa.synthesize_docvqa_val(tmp_path / "raw", seed=0, sizes={"val": 3})
    docvqa.convert_docvqa_val(tmp_path / "raw", tmp_path / "data")
    calls = []
    real_generate = evaluation.generate_answers

    def spy(model, processor, examples, **options):
        calls.append(([e.prompt_user for e in examples], options))
        return real_generate(model, processor, examples, **options)

    monkeypatch.setattr(evaluation, "generate_answers", spy)
    out = tmp_path / "lmms"
    scores = evaluate(model_dir=tiny_model, data_dir=tmp_path / "data", dataset_name="docvqa_val", split="val",
                      metric="anls", out_dir=out, run_name="base", num_crops=1, precision="bf16", attention="sdpa",
                      batch_size=4, max_new_tokens=4, stop_tokens="end_and_eos", max_samples=2, protocol="lmms_eval")
    (prompts, options), = calls  # one pass, with lmms-eval's settings whatever the recipe's are
    assert all(p.endswith("\nAnswer the question using a single word or phrase.") for p in prompts)
    assert (options["batch_size"], options["max_new_tokens"], options["stop_tokens"]) == (1, 32, "eos")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["val-0000000000", "val-0000000001"]  # the first max_samples questions
    assert [row["score"] for row in rows] == [round(anls_lmms_eval(r["prediction"], r["answers"]), 6) for r in rows]
    assert json.loads((out / "scores.json").read_text()) == scores
    assert (scores["protocol"], scores["split"], scores["n"]) == ("lmms_eval", "val", 2)
    assert scores["score"] == scores["anls_lmms_eval"] == pytest.approx(50 * sum(r["score"] for r in rows), abs=1e-3)
    assert scores["per_example"] == {"id": [r["id"] for r in rows], "score": [r["score"] for r in rows]}
    assert "majority_baseline" not in scores  # no train split beside DocVQA validation


def test_yes_probability_on_a_tiny_model(tiny_model, tmp_path):
    from phi3v.processing_phi3v import Phi3VProcessor

    data = tmp_path / "data"
    write_tiny_dataset(data)
    common = dict(model_dir=tiny_model, data_dir=data, split="test", run_name="base", num_crops=1,
                  precision="bf16", attention="sdpa", batch_size=2, max_new_tokens=4)

    # A yes/no split: the probability of "yes" comes from the first generated position.
    for name in ("docvqa_test.jsonl", "docvqa_train.jsonl"):
        path = data / name
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for index, record in enumerate(records):
            record["conversations"][0]["assistant"] = "Yes." if index % 2 else "No."
            record.pop("answers", None)
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    scores = evaluate(dataset_name="docvqa", metric="accuracy", out_dir=tmp_path / "yes", auroc=True, **common)
    p_yes = scores["per_example"]["p_yes"]
    assert len(p_yes) == 3 and all(0 < p < 1 for p in p_yes)
    assert scores["per_example"]["is_yes"] == [True, False, False]  # file order test-2, 0, 1; rows sorted by id
    # AUROC of one positive (p_yes[0]) against two negatives, ties counting half
    expected = sum((p_yes[0] > p) + 0.5 * (p_yes[0] == p) for p in (p_yes[1], p_yes[2])) / 2
    assert scores["auroc"] == pytest.approx(100 * expected)
    # The first example alone ("No."): the split still spells "yes", so the probability is there; AUROC is not.
    first = evaluate(dataset_name="docvqa", metric="accuracy", out_dir=tmp_path / "one", auroc=True, max_samples=1,
                     **common)
    assert first["auroc"] is None and first["per_example"]["p_yes"] == [pytest.approx(p_yes[2], abs=1e-6)]
    processor = Phi3VProcessor.from_pretrained(tiny_model)
    yes = processor.tokenizer("Yes.", add_special_tokens=False)["input_ids"][0]
    assert yes != processor.tokenizer("No.", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(UserError, match="auroc needs a yes/no task"):
        write_tiny_dataset(tmp_path / "other")
        evaluate(**{**common, "data_dir": tmp_path / "other"}, dataset_name="docvqa", metric="accuracy",
                 out_dir=tmp_path / "no", auroc=True)


def test_two_processes_give_the_same_predictions_as_one(tiny_model, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data)
    args = ["--model-dir", str(tiny_model), "--data-dir", str(data), "--dataset", "docvqa", "--split", "test",
            "--metric", "anls", "--run-name", "base", "--num-crops", "1", "--precision", "bf16",
            "--batch-size", "1", "--max-new-tokens", "4"]
    single = evaluate(model_dir=tiny_model, data_dir=data, dataset_name="docvqa", split="test", metric="anls",
                      out_dir=tmp_path / "one", run_name="base", num_crops=1, precision="bf16",
                      attention="sdpa", batch_size=1, max_new_tokens=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "phi3v.evaluation.evaluate", *args, "--out-dir", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "scores.json").read_text()) == single
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == (tmp_path / "one" / "predictions.jsonl").read_text()


def test_yes_probability_after_a_shared_prefix_equals_the_first_generated_position(tiny_model, tmp_path):
    """The teacher-forced forward (for tokenizers that start "Yes." and "No." alike) reads the same
    distribution as generation's first step when there is nothing to force: padding and positions agree."""
    from phi3v.data.dataset import load_eval_examples
    from phi3v.evaluation.generation import generate_answers, yes_no_tokens, yes_probability_after_prefix
    from phi3v.evaluation.inference import load_model
    from phi3v.image_files import load_image

    data = tmp_path / "data"
    write_tiny_dataset(data)
    examples = load_eval_examples(data / "docvqa_test.jsonl", data / "images", None)
    cpu = torch.device("cpu")
    model, processor = load_model(tiny_model, "bf16", "sdpa", cpu)
    tokens = yes_no_tokens(processor, ["Yes.", "No."])
    assert tokens.prefix == () and tokens.yes != tokens.no  # the demo tokenizer has whole-word tokens
    _, first_step = generate_answers(model, processor, examples, yes_no_ids=tokens, num_crops=1, max_new_tokens=1,
                                     batch_size=3, precision="bf16", device=cpu, progress=False)
    inputs = processor(text=[processor.generation_prompt(e.prompt_user) for e in examples],
                       images=[[load_image(path) for path in e.image_paths] for e in examples],
                       padding_side="left", num_crops=1)  # what generate_answers builds (prompts of other lengths)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with precision_context("bf16", cpu):
        teacher_forced = yes_probability_after_prefix(model, dict(inputs), tokens)
    assert teacher_forced == pytest.approx(first_step, abs=1e-2)


def test_yes_no_tokens_part_after_a_shared_prefix():
    from phi3v.evaluation.generation import yes_no_tokens

    class Tokenizer:  # a tiny BPE: "▁" first, then the word
        table = {"Yes.": [3, 7, 9], "No.": [3, 8, 9], "Yes": [3]}

        def __call__(self, text, add_special_tokens):
            return {"input_ids": self.table[text]}

    class Processor:
        tokenizer = Tokenizer()

    tokens = yes_no_tokens(Processor(), ["No.", "no.", "Yes."])  # the first spelling of each answer
    assert (tokens.prefix, tokens.yes, tokens.no) == ((3,), 7, 8)
    with pytest.raises(UserError, match="one is the start of the other"):
        yes_no_tokens(Processor(), ["Yes", "No."])  # [3] is the start of [3, 8, 9]
