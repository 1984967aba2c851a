"""The demo's base model: tiny Phi-3.5-vision, tiny tokenizer, a short pre-training on the demo corpus.

Two steps, two workflow jobs: the model without weights (config, tokenizer, processor files:
`results/model_config/`, all the speed rows need), then its pre-training (`results/base_model/`).
The pre-training goes through the same training code as every fine-tuning run
(`phi3v.training.train.train`, strategy `full`), so the demo exercises one loop, and the result is a
model folder in the official layout.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from phi3v.data.records import read_records
from phi3v.errors import UserError, entry_point
from phi3v.files import atomic_output_dir, write_json_atomic
from .run_config import RunConfig, Strategy

CORPUS_NAME = "pretrain"
DEMO_MODEL_ID = "phi3v-demo-tiny"


def pretrain_run(*, steps: int, seed: int) -> RunConfig:
    """Full-parameter pre-training settings: large learning rate, short warm-up, small batches."""
    return RunConfig(
        dataset=CORPUS_NAME, run="pretrain-full-bf16-sdpa", strategy=Strategy.FULL, precision="bf16",
        attention="sdpa", learning_rate=3e-3, epochs=1, num_crops=1, batch_size=8, per_device_batch_size=8,
        warmup_steps=max(1, steps // 10), gradient_checkpointing=False, max_steps=steps, seed=seed,
    )


def corpus_texts(folders) -> list[str]:
    """Every user and assistant text of every jsonl split in the folders (the tokenizer's corpus)."""
    texts = []
    for folder in folders:
        jsonl_files = sorted(Path(folder).glob("*.jsonl"))
        if not jsonl_files:
            raise UserError(f"{folder}: no *.jsonl split found — build that dataset before the base model")
        for path in jsonl_files:
            for record in read_records(path):
                for turn in record.conversations:
                    texts += [turn.user, turn.assistant]
    return texts


def write_weightless_base(folder: Path, *, texts: list[str], vocab_size: int) -> None:
    """Tokenizer, tiny config and the tiny-crop image processor, in one folder: the model without its
    weights (`layout.model_config`), all that speed rows with random weights read."""
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.image_processing_phi3v import Phi3VImageProcessor
    from phi3v.processing_phi3v import IMAGE_TOKEN, Phi3VProcessor

    from .demo_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(texts, vocab_size)
    config = Phi3VConfig.tiny(vocab_size=vocab_size, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                              pad_token_id=tokenizer.pad_token_id)
    # what a model's save_pretrained records beside the config
    config.architectures, config.dtype = ["Phi3VForCausalLM"], torch.float32
    config.save_pretrained(folder)
    image_processor = Phi3VImageProcessor(num_crops=1, crop_size=config.crop_size)
    Phi3VProcessor(image_processor, tokenizer).save_pretrained(folder)


def add_random_weights(folder: Path, *, seed: int) -> None:
    """Random weights, drawn from `seed`, for the config in `folder`, saved beside it."""
    from phi3v.configuration_phi3v import Phi3VConfig
    from phi3v.modeling_phi3v import Phi3VForCausalLM

    config = Phi3VConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    Phi3VForCausalLM.random_init(config).save_pretrained(folder)


def write_random_base(folder: Path, *, texts: list[str], vocab_size: int, seed: int) -> None:
    """Tokenizer, tiny config, random weights and the tiny-crop image processor, in one folder."""
    write_weightless_base(folder, texts=texts, vocab_size=vocab_size)
    add_random_weights(folder, seed=seed)


def write_demo_model_config(corpus_dir, text_dirs, out_dir, *, vocab_size: int) -> None:
    """The demo model without weights at `out_dir`: its tokenizer learns every text of the corpus and
    of the dataset folders `text_dirs`."""
    out_dir = Path(out_dir)
    texts = corpus_texts([corpus_dir, *text_dirs])
    with atomic_output_dir(out_dir) as partial:
        write_weightless_base(partial, texts=texts, vocab_size=vocab_size)


def check_steps(steps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"build_demo_base: steps={steps!r} — give a positive integer")


def pretrain_demo_base(model_config, corpus_dir, out_dir, *, steps: int, seed: int) -> dict:
    """Pre-train random weights (drawn from `seed`) for the weightless model folder `model_config` on
    the corpus, and write the demo's base model folder at `out_dir`; return the pre-training metrics."""
    from phi3v import provenance
    from .train import train

    model_config, corpus_dir, out_dir = Path(model_config), Path(corpus_dir), Path(out_dir)
    check_steps(steps)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-build-", dir=out_dir.parent) as work:
        work = Path(work)
        shutil.copytree(model_config, work / "random")
        add_random_weights(work / "random", seed=seed)
        metrics = train(pretrain_run(steps=steps, seed=seed), base_model=work / "random", data_dir=corpus_dir,
                        dataset_name=CORPUS_NAME, out_dir=work / "trained", checkpoint_dir=work / "checkpoints")
        model_dir = work / "trained" / "model"
        vocab_size = json.loads((model_config / "config.json").read_text())["vocab_size"]
        write_json_atomic(model_dir / provenance.MODEL_SOURCE_FILE, {
            "model": {"id": DEMO_MODEL_ID, "revision": provenance.sha256_file(model_dir / "model.safetensors")},
            "pretraining": {"steps": steps, "seed": seed, "vocab_size": vocab_size, "final_loss": metrics["final_loss"],
                            "corpus": provenance.dataset_hashes(corpus_dir)},
        })
        (work / "trained" / "train_log.jsonl").replace(model_dir / "pretrain_log.jsonl")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        model_dir.rename(out_dir)
    return metrics


def build_demo_base(corpus_dir, text_dirs, out_dir, *, steps: int, seed: int, vocab_size: int) -> dict:
    """Both steps at once (the command line): the demo's base model folder at `out_dir`."""
    out_dir = Path(out_dir)
    check_steps(steps)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-config-", dir=out_dir.parent) as work:
        model_config = Path(work) / "model_config"
        write_demo_model_config(corpus_dir, text_dirs, model_config, vocab_size=vocab_size)
        return pretrain_demo_base(model_config, corpus_dir, out_dir, steps=steps, seed=seed)


@entry_point
def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m phi3v.training.demo_model", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus-dir", required=True)
    parser.add_argument("--text-dir", action="append", default=[], help="a demo dataset folder (repeatable)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    metrics = build_demo_base(args.corpus_dir, args.text_dir, args.out_dir, steps=args.steps, seed=args.seed,
                              vocab_size=args.vocab_size)
    print(json.dumps({k: metrics[k] for k in ("final_loss", "steps", "wall_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
