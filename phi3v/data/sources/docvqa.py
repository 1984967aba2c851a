"""DocVQA: the recipe's mini set `nielsr/docvqa_1200_examples` (train 1000 / test 200).

Raw layout (as in the hub repo): `data/train-*.parquet` and `data/test-*.parquet` with columns `id`,
`image` (image struct `{bytes, path}`), `query` (struct of `de, en, es, fr, it` questions),
`answers` (list of gold answers), `words`, `bounding_boxes`, `answer`. The converter reads `id`,
`image`, `query.en` and `answers`.

Records: prompt `<|image_1|>\\n{question}\\nAnswer briefly.`, target one of the gold answers (the
first, or one drawn per record from `answer_seed`), `answers` = every gold answer (for ANLS).
The full training set (the recipe's `--full_train`) is the Cauldron's `docvqa` configuration: pass
its raw folder as `full_train_dir`; the test split still comes from the mini set.

DocVQA's validation split as lmms-eval's `docvqa_val` task reads it (task `docvqa_val`):
`lmms-lab-encoder/DocVQA`, config `DocVQA`, stored as `DocVQA/validation-0000k-of-0000n.parquet` with
columns `questionId`, `question`, `question_types`, `image`, `docId`, `ucsf_document_id`,
`ucsf_document_page_no`, `answers`, `data_split` (5,349 questions). It converts to one `val` split
with the same records (the recipe's prompt; `answers` = every gold answer), for evaluation only.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator

import datasets

from phi3v.data.sources import cauldron, synthetic_images
from phi3v.files import atomic_output_dir
from phi3v.data.sources.common import synthetic_sizes
from phi3v.data.sources.hub import download_snapshot, write_source_record
from phi3v.data.sources.raw_folder import RowLocator, check_columns, iter_parquet_rows, parquet_files
from phi3v.data.sources.split_writer import RawExample, SplitWriter
from phi3v.errors import UserError

NAME = "docvqa"
REPO_ID = "nielsr/docvqa_1200_examples"
SPLIT_PATTERNS = {"train": "data/train-*.parquet", "test": "data/test-*.parquet"}
REQUIRED_COLUMNS = ["id", "image", "query", "answers"]
PROMPT_SUFFIX = "\nAnswer briefly."
QUERY_LANGUAGES = ("de", "en", "es", "fr", "it")
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "query": {language: datasets.Value("string") for language in QUERY_LANGUAGES},
        "answers": datasets.List(datasets.Value("string")),
        "words": datasets.List(datasets.Value("string")),
        "bounding_boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "answer": {
            "match_score": datasets.Value("float64"),
            "matched_text": datasets.Value("string"),
            "start": datasets.Value("int64"),
            "text": datasets.Value("string"),
        },
    }
)


def _fix_hint(raw_dir) -> str:
    return (
        f"Fill {raw_dir} with download_docvqa(raw_dir) or the demo's synthesize_docvqa (expected "
        f"layout: {', '.join(SPLIT_PATTERNS.values())} with columns {', '.join(REQUIRED_COLUMNS)})."
    )


def download_docvqa(
    raw_dir: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> dict:
    """Download the mini set's parquet shards into `raw_dir`; returns the SOURCE.json record."""
    return download_snapshot(
        REPO_ID, raw_dir, allow_patterns=list(SPLIT_PATTERNS.values()), revision=revision, cache_dir=cache_dir
    )


def download_docvqa_full_train(raw_dir, revision=None, cache_dir=None) -> dict:
    """Download the Cauldron's `docvqa` configuration (the full training set) into its own raw folder."""
    return cauldron.download_cauldron(raw_dir, "docvqa", revision, cache_dir)


# The recipe's `--full_train` as a task of its own: one raw folder holding both sources.
FULL_TRAIN_PARTS = {"mini": "nielsr", "cauldron": "cauldron-docvqa"}


def download_docvqa_full(raw_dir, revision=None, cache_dir=None) -> dict:
    """The recipe's `--full_train` data: the Cauldron's `docvqa` to train on, the mini set's test
    split to evaluate on, as `raw_dir/nielsr/` and `raw_dir/cauldron-docvqa/` (`revision` pins the mini set)."""
    raw_dir = Path(raw_dir)
    return {
        "mini": download_docvqa(raw_dir / FULL_TRAIN_PARTS["mini"], revision, cache_dir),
        "cauldron": download_docvqa_full_train(raw_dir / FULL_TRAIN_PARTS["cauldron"], None, cache_dir),
    }


def convert_docvqa_full(raw_dir, out_dir, **options) -> dict:
    """`convert_docvqa` on a `download_docvqa_full` folder: Cauldron train split, mini test split."""
    raw_dir = Path(raw_dir)
    return convert_docvqa(
        raw_dir / FULL_TRAIN_PARTS["mini"], out_dir, full_train_dir=raw_dir / FULL_TRAIN_PARTS["cauldron"], **options
    )


def pick_answer(answers: list[str], answer_seed: int | None, split: str, index: int) -> str:
    """The training target: the first gold answer, or one drawn per record (the recipe draws one)."""
    if answer_seed is None:
        return answers[0]
    return random.Random(f"{answer_seed}-{split}-{index}").choice(answers)


def read_docvqa_split(raw_dir, split: str, answer_seed: int | None) -> Iterator[RawExample]:
    """Rows of one split of the mini set's raw folder, as examples with the recipe's prompt."""
    fix = _fix_hint(raw_dir)
    files = parquet_files(raw_dir, SPLIT_PATTERNS[split], fix=fix)
    check_columns(files, REQUIRED_COLUMNS, fix=fix)
    locator = RowLocator.for_files(files)
    for index, row in enumerate(iter_parquet_rows(files, {"image": datasets.Image(decode=False)})):
        where = locator.describe(index)
        question = (row["query"] or {}).get("en")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where} (id {row['id']!r}): 'query.en' is empty; every row needs a question.")
        answers = [a for a in row["answers"] or [] if isinstance(a, str)]
        if not answers:
            raise UserError(f"{where} (id {row['id']!r}): 'answers' is empty; every row needs a gold answer.")
        target = pick_answer(answers, answer_seed, split, index)
        yield RawExample(
            index, where, [(question + PROMPT_SUFFIX, target)], [row["image"]], files[0].parent, answers
        )


def convert_docvqa(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    answer_seed: int | None = None,
    full_train_dir: str | os.PathLike | None = None,
    skip_corrupt: bool = False,
    name: str = NAME,
) -> dict:
    """Raw folder -> `out_dir/<name>_{train,test}.jsonl` + `out_dir/images/`; returns per-split counts.

    With `full_train_dir` (a raw folder of the Cauldron's `docvqa` configuration) the train split is
    the Cauldron's (multi-turn rows kept) and only the test split is read from `raw_dir`.
    """
    with atomic_output_dir(out_dir) as tmp_dir:
        summary = {}
        test = SplitWriter(tmp_dir, name, "test", NAME, skip_corrupt=skip_corrupt)
        for example in read_docvqa_split(raw_dir, "test", answer_seed):
            test.add(example)
        summary["test"] = test.finish()

        train = SplitWriter(tmp_dir, name, "train", NAME, skip_corrupt=skip_corrupt)
        if full_train_dir is None:
            examples = read_docvqa_split(raw_dir, "train", answer_seed)
        else:
            examples = cauldron.read_cauldron(full_train_dir, "docvqa")[1]
        for example in examples:
            train.add(example)
        summary["train"] = train.finish()
        return summary


# ---------------------------------------------------------------------------------------------
# DocVQA validation in lmms-eval's hub layout (task `docvqa_val`)

VAL_NAME = "docvqa_val"
VAL_REPO_ID = "lmms-lab-encoder/DocVQA"
VAL_CONFIG = "DocVQA"
VAL_SPLIT = "val"  # the project's name of the hub's `validation` split
VAL_PATTERN = f"{VAL_CONFIG}/validation-*.parquet"
VAL_REQUIRED_COLUMNS = ["questionId", "question", "image", "answers"]
VAL_FEATURES = datasets.Features(
    {
        "questionId": datasets.Value("string"),
        "question": datasets.Value("string"),
        "question_types": datasets.List(datasets.Value("string")),
        "image": datasets.Image(),
        "docId": datasets.Value("int64"),
        "ucsf_document_id": datasets.Value("string"),
        "ucsf_document_page_no": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "data_split": datasets.Value("string"),
    }
)


def download_docvqa_val(raw_dir, revision=None, cache_dir=None) -> dict:
    """Download the validation shards of `lmms-lab-encoder/DocVQA` (config `DocVQA`) into `raw_dir`."""
    return download_snapshot(VAL_REPO_ID, raw_dir, allow_patterns=[VAL_PATTERN], revision=revision, cache_dir=cache_dir)


def read_docvqa_val(raw_dir) -> Iterator[RawExample]:
    """Rows of the validation shards, as examples with the recipe's prompt and every gold answer."""
    fix = (f"Fill {raw_dir} with download_docvqa_val(raw_dir) or synthesize_docvqa_val (expected layout: "
           f"{VAL_PATTERN} with columns {', '.join(VAL_REQUIRED_COLUMNS)}).")
    files = parquet_files(raw_dir, VAL_PATTERN, fix=fix)
    check_columns(files, VAL_REQUIRED_COLUMNS, fix=fix)
    locator = RowLocator.for_files(files)
    for index, row in enumerate(iter_parquet_rows(files, {"image": datasets.Image(decode=False)})):
        where = f"{locator.describe(index)} (questionId {row['questionId']!r})"
        question = row["question"]
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: 'question' is empty; every row needs a question.")
        answers = [a for a in row["answers"] or [] if isinstance(a, str)]
        if not answers:
            raise UserError(f"{where}: 'answers' is empty; the validation split needs gold answers.")
        yield RawExample(index, where, [(question + PROMPT_SUFFIX, answers[0])], [row["image"]],
                         files[0].parent, answers)


def convert_docvqa_val(raw_dir, out_dir, *, skip_corrupt: bool = False, name: str = VAL_NAME) -> dict:
    """Raw folder -> `out_dir/<name>_val.jsonl` + `out_dir/images/` (evaluation only: no train split)."""
    with atomic_output_dir(out_dir) as tmp_dir:
        split = SplitWriter(tmp_dir, name, VAL_SPLIT, VAL_NAME, skip_corrupt=skip_corrupt)
        for example in read_docvqa_val(raw_dir):
            split.add(example)
        return {VAL_SPLIT: split.finish()}


def _validation_row(rng: random.Random, index: int) -> dict:
    page = synthetic_images.draw_form_page(rng, synthetic_images.form_page_size(index))
    return {
        "questionId": str(50000 + index),
        "question": page.question,
        "question_types": ["form"],
        "image": {"bytes": synthetic_images.encode_image(page.image, "PNG"), "path": None},
        "docId": 10000 + index,
        "ucsf_document_id": f"synthetic{index:04d}",
        "ucsf_document_page_no": "1",
        "answers": page.answers,
        "data_split": "val",
    }


def synthesize_docvqa_val(raw_dir: str | os.PathLike, seed: int, sizes: dict) -> dict:
    """Demo raw folder in `lmms-lab-encoder/DocVQA`'s layout: `sizes = {"val": n}` form pages."""
    n = synthetic_sizes(sizes, (VAL_SPLIT,), VAL_NAME)[VAL_SPLIT]
    rng = random.Random(f"{VAL_NAME}-{seed}")
    path = Path(raw_dir) / VAL_PATTERN.replace("*", "00000-of-00001")
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list([_validation_row(rng, index) for index in range(n)], features=VAL_FEATURES).to_parquet(path)
    record = {"synthetic": True, "generator": "phi3v.data.sources.synthetic_images", "task": VAL_NAME,
              "seed": seed, "sizes": {VAL_SPLIT: n}, "layout": VAL_REPO_ID}
    write_source_record(raw_dir, record)
    return record


# ---------------------------------------------------------------------------------------------
# The demo's mini set


def _form_row(rng: random.Random, split: str, index: int) -> dict:
    page = synthetic_images.draw_form_page(rng, synthetic_images.form_page_size(index))
    return {
        "id": f"{split}_{index}",
        "image": {"bytes": synthetic_images.encode_image(page.image, "PNG"), "path": None},
        "query": {language: (page.question if language == "en" else None) for language in QUERY_LANGUAGES},
        "answers": page.answers,
        "words": page.words,
        "bounding_boxes": page.boxes,
        # The colour answers are not printed on the page: no extractive match.
        "answer": {"match_score": 0.0, "matched_text": None, "start": -1, "text": page.answers[0]},
    }


def synthesize_docvqa(raw_dir: str | os.PathLike, seed: int, sizes: dict) -> dict:
    """Demo raw folder in the mini set's layout: `sizes = {"train": n, "test": n}` form pages."""
    record = {
        "synthetic": True,
        "generator": "phi3v.data.sources.synthetic_images",
        "task": NAME,
        "seed": seed,
        "sizes": {},
        "layout": REPO_ID,
    }
    counts = synthetic_sizes(sizes, tuple(SPLIT_PATTERNS), NAME)
    for split, pattern in SPLIT_PATTERNS.items():
        n = counts[split]
        rng = random.Random(f"{NAME}-{seed}-{split}")
        rows = [_form_row(rng, split, index) for index in range(n)]
        path = Path(raw_dir) / pattern.replace("*", "00000-of-00001")
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(path)
        record["sizes"][split] = n
    write_source_record(raw_dir, record)
    return record
