"""Hateful Memes and NLVR2 (and DocVQA's full training set) from `HuggingFaceM4/the_cauldron`.

Raw layout (one folder per task, as in the hub repo): `<config>/train-*.parquet` with columns
`images` (list of image structs `{bytes, path}`) and `texts` (list of `{user, assistant, source}`,
one per turn). The recipe evaluates on the first rows of the hub's train split: `train[:eval_size]`
becomes our `test` split and `train[eval_size:]` our `train` split. Record ids keep the hub row
index (`test-0000000000`, ..., `train-0000000500`, ...).
"""

from __future__ import annotations

import dataclasses

import os
import random
from pathlib import Path
from typing import Iterator

import datasets

from phi3v.data.sources import synthetic_images
from phi3v.files import atomic_output_dir
from phi3v.data.sources.common import synthetic_sizes
from phi3v.data.sources.hub import download_snapshot, read_source_record, write_source_record
from phi3v.data.sources.raw_folder import RowLocator, check_columns, iter_parquet_rows, parquet_files
from phi3v.data.sources.split_writer import RawExample, SplitWriter
from phi3v.errors import UserError

REPO_ID = "HuggingFaceM4/the_cauldron"
FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "texts": [
            {
                "user": datasets.Value("string"),
                "assistant": datasets.Value("string"),
                "source": datasets.Value("string"),
            }
        ],
    }
)
# Images every example of a config must have (NLVR2 is a pair: left, right).
IMAGES_PER_EXAMPLE = {"hateful_memes": 1, "nlvr2": 2, "docvqa": 1}
EVAL_SIZE = 500
EVAL_SPLIT = "test"
# The `source` field of the Cauldron's texts for the configurations the demo generates.
SOURCE_NAMES = {"hateful_memes": "Hateful Memes", "nlvr2": "NLVR2"}


def config_pattern(config: str) -> str:
    return f"{config}/train-*.parquet"


def _fix_hint(raw_dir: str | os.PathLike, config: str) -> str:
    return (
        f"Fill {raw_dir} with download_cauldron(raw_dir, '{config}') or the demo's synthesize_* "
        f"(expected layout: {config_pattern(config)} with columns images, texts)."
    )


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def download_cauldron(
    raw_dir: str | os.PathLike,
    config: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Download one configuration of the Cauldron (its train parquet shards) into `raw_dir`."""
    return download_snapshot(
        REPO_ID, raw_dir, allow_patterns=[config_pattern(config)], revision=revision, cache_dir=cache_dir
    )


def download_hateful_memes(raw_dir, revision=None, cache_dir=None) -> dict:
    return download_cauldron(raw_dir, "hateful_memes", revision, cache_dir)


def download_nlvr2(raw_dir, revision=None, cache_dir=None) -> dict:
    return download_cauldron(raw_dir, "nlvr2", revision, cache_dir)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _turns(texts, where: str) -> list[tuple[str, str]]:
    if not texts:
        raise UserError(f"{where}: 'texts' is empty; every row needs at least one user/assistant turn.")
    turns = []
    for k, text in enumerate(texts):
        user, assistant = (text or {}).get("user"), (text or {}).get("assistant")
        if not isinstance(user, str) or not isinstance(assistant, str):
            raise UserError(f"{where}: texts[{k}] needs string 'user' and 'assistant' fields, got {text!r}.")
        turns.append((user, assistant))
    return turns


def read_cauldron(raw_dir: str | os.PathLike, config: str) -> tuple[int, Iterator[RawExample]]:
    """(number of rows, rows in hub order) of one configuration's raw folder."""
    fix = _fix_hint(raw_dir, config)
    files = parquet_files(raw_dir, config_pattern(config), fix=fix)
    check_columns(files, ["images", "texts"], fix=fix)
    locator = RowLocator.for_files(files)
    expected_images = IMAGES_PER_EXAMPLE.get(config)

    def rows() -> Iterator[RawExample]:
        undecoded = {"images": datasets.List(datasets.Image(decode=False))}
        for index, row in enumerate(iter_parquet_rows(files, undecoded)):
            where = locator.describe(index)
            images = row["images"] or []
            if expected_images is not None and len(images) != expected_images:
                raise UserError(
                    f"{where}: a {config} example needs exactly {expected_images} image(s), found "
                    f"{len(images)}. {fix}"
                )
            yield RawExample(index, where, _turns(row["texts"], where), images, files[0].parent)

    return locator.num_rows, rows()


# ---------------------------------------------------------------------------------------------
# Convert
# ---------------------------------------------------------------------------------------------


def convert_cauldron(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: str,
    *,
    name: str,
    eval_size: int | None = None,
    skip_corrupt: bool = False,
    first_turn_only: bool = False,
) -> dict:
    """Raw folder of one configuration -> `out_dir/<name>_{test,train}.jsonl` + `out_dir/images/`.

    `test` = the first `eval_size` hub rows, `train` = the rest. `eval_size=None` takes the size a
    synthetic raw folder records in its SOURCE.json, else the recipe's 500. `first_turn_only` keeps
    `texts[0]` of each row (what the recipe's Hateful Memes script trains and evaluates). Returns
    per-split counts.
    """
    if eval_size is None:
        eval_size = (read_source_record(raw_dir) or {}).get("eval_size", EVAL_SIZE)
    if not isinstance(eval_size, int) or isinstance(eval_size, bool) or eval_size < 1:
        raise UserError(f"eval_size must be a positive integer, got {eval_size!r}.")
    num_rows, rows = read_cauldron(raw_dir, config)
    if num_rows <= eval_size:
        raise UserError(
            f"{raw_dir}: {config} has {num_rows} rows, but eval_size={eval_size} leaves none for "
            "training; lower eval_size or provide more rows."
        )
    with atomic_output_dir(out_dir) as tmp_dir:
        writers = {
            split: SplitWriter(tmp_dir, name, split, name, skip_corrupt=skip_corrupt)
            for split in (EVAL_SPLIT, "train")
        }
        for example in rows:
            if first_turn_only:
                example = dataclasses.replace(example, turns=example.turns[:1])
            writers[EVAL_SPLIT if example.index < eval_size else "train"].add(example)
        return {split: writer.finish() for split, writer in writers.items()}


def convert_hateful_memes(raw_dir, out_dir, *, eval_size: int | None = None, skip_corrupt: bool = False,
                          name: str = "hateful_memes") -> dict:
    # the recipe's collator and evaluation read texts[0] only: a row's later turns are never seen
    return convert_cauldron(raw_dir, out_dir, "hateful_memes", name=name, eval_size=eval_size, skip_corrupt=skip_corrupt,
                            first_turn_only=True)


def convert_nlvr2(raw_dir, out_dir, *, eval_size: int | None = None, skip_corrupt: bool = False,
                  name: str = "nlvr2") -> dict:
    return convert_cauldron(raw_dir, out_dir, "nlvr2", name=name, eval_size=eval_size, skip_corrupt=skip_corrupt)


# ---------------------------------------------------------------------------------------------
# Synthetic raw folders for the demo
# ---------------------------------------------------------------------------------------------


def write_cauldron_parquet(raw_dir: str | os.PathLike, config: str, images: list, texts: list) -> Path:
    """Write one shard `<config>/train-00000-of-00001.parquet` with the Cauldron's features."""
    path = Path(raw_dir) / config / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"images": images, "texts": texts}, features=FEATURES).to_parquet(path)
    return path


def _synthesize(raw_dir, task: str, seed: int, sizes: dict, draw_example) -> dict:
    """Eval rows first, then train rows (the recipe's `train[:eval_size]` rule picks the eval set)."""
    counts = synthetic_sizes(sizes, ("train", EVAL_SPLIT), task)
    n_eval, n_train = counts[EVAL_SPLIT], counts["train"]
    images, texts = [], []
    for split, n in ((EVAL_SPLIT, n_eval), ("train", n_train)):
        rng = random.Random(f"{task}-{seed}-{split}")
        for label in synthetic_images.balanced_labels(rng, n):
            example_images, user = draw_example(rng, label)
            images.append([{"bytes": data, "path": None} for data in example_images])
            texts.append([{"user": user, "assistant": "Yes." if label else "No.", "source": SOURCE_NAMES[task]}])
    write_cauldron_parquet(raw_dir, task, images, texts)
    record = {
        "synthetic": True,
        "generator": "phi3v.data.sources.synthetic_images",
        "task": task,
        "seed": seed,
        "sizes": {EVAL_SPLIT: n_eval, "train": n_train},
        "eval_size": n_eval,
        "layout": f"{REPO_ID}: {config_pattern(task)}",
    }
    write_source_record(raw_dir, record)
    return record



def _draw_meme(rng: random.Random, hateful: bool) -> tuple[list[bytes], str]:
    meme = synthetic_images.draw_meme(rng, hateful)
    return [synthetic_images.encode_image(meme, "JPEG")], synthetic_images.meme_question(rng)


def _draw_pair(rng: random.Random, true: bool) -> tuple[list[bytes], str]:
    left, right, question = synthetic_images.draw_pair(rng, true)
    return [synthetic_images.encode_image(im, "PNG") for im in (left, right)], question


def synthesize_hateful_memes(raw_dir: str | os.PathLike, seed: int, sizes: dict) -> dict:
    """Demo raw folder in the Cauldron's `hateful_memes` layout: `sizes["test"]` eval rows, then
    `sizes["train"]` training rows, yes/no balanced in each; SOURCE.json records the eval size."""
    return _synthesize(raw_dir, "hateful_memes", seed, sizes, _draw_meme)


def synthesize_nlvr2(raw_dir: str | os.PathLike, seed: int, sizes: dict) -> dict:
    """Demo raw folder in the Cauldron's `nlvr2` layout (two images an example); same sizes rule."""
    return _synthesize(raw_dir, "nlvr2", seed, sizes, _draw_pair)
