"""The recipe's fine-tuning scripts as one command, with their flags and defaults.

    python -m phi3v.recipe hateful_memes --output_dir out --batch_size 64 --use_flash_attention --bf16
    torchrun --nproc_per_node=8 -m phi3v.recipe nlvr2 --bf16 --use_flash_attention --batch_size 64 ...

`<task>` names the script (`finetune_hf_trainer_<task>.py`): docvqa, hateful_memes, nlvr2, ucf101.
Each task takes that script's flags with that script's defaults; `flags_to_run` turns them into one
`RunConfig` by the scripts' rules. The command then does what a script does, with this project's
parts: evaluate the model as loaded, train, evaluate the trained model; and it prints the workflow
config (a `config.yaml` snippet) that runs the same training as a Snakemake job.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from phi3v.errors import UserError, entry_point
from phi3v.layout import BASE_RUN, MODEL
from phi3v.model_sizes import MAX_NUM_CROPS
from phi3v.training.run_config import TRACKERS, RunConfig, Strategy, evaluation_precision, load_precision, run_id
from phi3v.data import recipe_train_turns

DEFAULT_MODEL = "microsoft/Phi-3.5-vision-instruct"  # the scripts' default since the Phi-3.5 release
MAX_NEW_TOKENS = 64  # the scripts' generation length for evaluation
HF_TRAINER_SEED = 42  # the scripts set no seed, so the HF Trainer's default applies
CAULDRON_EVAL_SIZE = 500  # hateful_memes and nlvr2 evaluate on the Cauldron's train[:500]
CACHE_ENV = "PHI3V_CACHE"


@dataclass(frozen=True)
class Script:
    """What sets one recipe script apart: its extra flags, defaults, data and metric."""

    task: str
    metric: str
    eval_split: str
    num_crops: int = 16
    batch_size_per_gpu: bool = False  # has --batch_size_per_gpu (else per-device batch 1)
    full_train: bool = False  # has --full_train
    needs_data_dir: bool = False  # has --data_dir (required)
    bf16_with_flash: bool = False  # --use_flash_attention forces bf16 training
    cauldron: bool = False  # hub data: the Cauldron, evaluated on train[:500]


SCRIPTS = {
    "docvqa": Script("docvqa", "anls", "test", full_train=True),
    "hateful_memes": Script("hateful_memes", "accuracy", "test", cauldron=True),
    "nlvr2": Script("nlvr2", "accuracy", "test", batch_size_per_gpu=True, bf16_with_flash=True, cauldron=True),
    "ucf101": Script("ucf101", "accuracy", "val", num_crops=4, batch_size_per_gpu=True, needs_data_dir=True,
                     bf16_with_flash=True),
}


# ---- flags ---------------------------------------------------------------------------------------

def build_parser(task: str) -> argparse.ArgumentParser:
    """The script's own flags, with its defaults, then this project's additions."""
    script = SCRIPTS[task]
    parser = argparse.ArgumentParser(
        prog=f"python -m phi3v.recipe {task}",
        description=f"The recipe's finetune_hf_trainer_{task}.py: evaluate, train, evaluate, on this project's "
                    "trainer and evaluator; prints the equivalent config.yaml snippet.")
    recipe = parser.add_argument_group("the recipe script's flags (same names and defaults)")
    recipe.add_argument("--model_name_or_path", default=DEFAULT_MODEL, help="model folder or hub id (default %(default)s)")
    if script.full_train:
        recipe.add_argument("--full_train", action="store_true",
                            help="train on the Cauldron's full DocVQA train set instead of the 1000-example mini set")
    recipe.add_argument("--use_flash_attention", action="store_true",
                        help="flash attention; also loads the model in bf16" +
                             (" and forces bf16 training" if script.bf16_with_flash else ""))
    recipe.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default fp16)")
    recipe.add_argument("--use_lora", action="store_true", help="LoRA")
    recipe.add_argument("--use_qlora", action="store_true", help="QLoRA (4-bit NF4 base); implies --use_lora")
    recipe.add_argument("--output_dir", default="./output/", help="output folder (default %(default)s)")
    recipe.add_argument("--batch_size", type=int, default=16, help="effective batch size (default %(default)s)")
    if script.batch_size_per_gpu:
        recipe.add_argument("--batch_size_per_gpu", type=int, default=1, help="per-GPU batch (default %(default)s)")
    if script.needs_data_dir:
        recipe.add_argument("--data_dir", required=True, help="the converted UCF-101 folder (convert_ucf101.py's --out_dir)")
    recipe.add_argument("--num_crops", type=int, default=script.num_crops,
                        help=f"maximum image crops, at most {MAX_NUM_CROPS} (default %(default)s)")
    recipe.add_argument("--num_train_epochs", type=int, default=1, help="epochs (default %(default)s)")
    recipe.add_argument("--learning_rate", type=float, default=4.0e-5, help="learning rate (default %(default)s)")
    recipe.add_argument("--wd", type=float, default=0.01, help="weight decay (default %(default)s)")
    recipe.add_argument("--no-tqdm", dest="tqdm", action="store_false", help="no progress bars")
    recipe.add_argument("--lora_rank", type=int, default=64, help="LoRA rank (default %(default)s)")
    recipe.add_argument("--lora_alpha_ratio", type=float, default=2,
                        help="LoRA alpha = round(rank x ratio) (default %(default)s)")
    recipe.add_argument("--lora_dropout", type=float, default=0.0, help="LoRA dropout (default %(default)s)")
    recipe.add_argument("--freeze_vision_model", action="store_true", help="freeze the vision model")
    # Not a flag of the scripts: their argparse would read it as --lora_alpha_ratio (an abbreviation).
    recipe.add_argument("--lora_alpha", type=float, help=argparse.SUPPRESS)

    extra = parser.add_argument_group("this project's additions (not in the recipe's scripts)")
    if not script.needs_data_dir:
        extra.add_argument("--data_dir", help=f"a converted folder ({task}_train.jsonl, ..., images/) instead of "
                                              "downloading and converting the hub's data")
    if script.cauldron:
        extra.add_argument("--eval_size", type=int, default=CAULDRON_EVAL_SIZE,
                           help="hub rows held out for evaluation (the recipe's train[:500]; default %(default)s)")
    extra.add_argument("--cache_dir", default=os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "phi3v" / "recipe")),
                       help=f"where downloaded models and converted datasets are kept (default ${CACHE_ENV} or %(default)s)")
    extra.add_argument("--attention", choices=("flash_attention_2", "sdpa", "eager"),
                       help="attention kernel instead of the one --use_flash_attention picks (e.g. sdpa where "
                            "flash-attn is missing; the precision rules stay the recipe's)")
    extra.add_argument("--no_deepspeed", action="store_true",
                       help="full-parameter runs without DeepSpeed ZeRO-2 (the recipe always uses it for them)")
    extra.add_argument("--max_steps", type=int, help="stop after this many optimiser steps")
    extra.add_argument("--max_train_samples", type=int, help="train on the first N samples only")
    extra.add_argument("--max_eval_samples", type=int, help="evaluate on the first N samples only")
    extra.add_argument("--report_to", nargs="+", choices=TRACKERS, default=[],
                       help="experiment trackers (files under OUTPUT_DIR/trackers/)")
    extra.add_argument("--skip_eval", action="store_true", help="train only; no evaluation before or after")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[str, argparse.Namespace]:
    tasks = argparse.ArgumentParser(prog="python -m phi3v.recipe", add_help=False,
                                    usage="python -m phi3v.recipe {%s} [flags] (see <task> --help)" % ",".join(SCRIPTS))
    tasks.add_argument("task", choices=SCRIPTS)
    if not argv or argv[0] in ("-h", "--help"):
        tasks.print_usage()
        print(__doc__)
        raise SystemExit(0)
    task = tasks.parse_args(argv[:1]).task
    return task, build_parser(task).parse_args(argv[1:])


def dataset_key(task: str, args: argparse.Namespace) -> str:
    """The workflow's dataset name: the paper preset's, or `docvqa_mini` for the mini set."""
    if task == "docvqa" and not args.full_train:
        return "docvqa_mini"
    return task


def hub_task(task: str, args: argparse.Namespace) -> str:
    """Which converter reads the hub's data (`docvqa_full` is the recipe's --full_train)."""
    return "docvqa_full" if task == "docvqa" and args.full_train else task


def flags_to_run(task: str, args: argparse.Namespace, world_size: int = 1) -> RunConfig:
    """The scripts' flags -> one RunConfig, by the scripts' rules.

    QLoRA implies LoRA; --freeze_vision_model freezes the vision model (and, through it, the token
    embeddings) of a full-parameter run, and keeps LoRA off it otherwise; LoRA alpha = round(rank x ratio); bf16 training only with --bf16, except that
    nlvr2 and ucf101 force it with flash attention; flash attention or eager (never SDPA); full-parameter
    runs under DeepSpeed ZeRO-2, LoRA under DDP; per-device batch 1 unless the script has
    --batch_size_per_gpu; 50 warm-up steps, gradient clipping 1.0, gradient checkpointing, no
    intermediate checkpoints; DocVQA trains one random Q/A pair (one random gold answer) a visit. The scripts load weights in bf16 exactly when flash attention is on;
    this project's loading rule is `phi3v.training.run_config.load_precision`.
    """
    script = SCRIPTS[task]
    if args.lora_alpha is not None:
        raise UserError("--lora_alpha is not a flag of the recipe's scripts: their argparse reads it as "
                        "--lora_alpha_ratio (alpha = round(rank x ratio)) — give --lora_alpha_ratio "
                        "(e.g. --lora_rank 32 --lora_alpha_ratio 0.5 for alpha 16)")
    if not 1 <= args.num_crops <= MAX_NUM_CROPS:
        raise UserError(f"--num_crops {args.num_crops}: the recipe allows 1 to {MAX_NUM_CROPS}")
    use_lora = args.use_lora or args.use_qlora
    strategy = (Strategy.QLORA if args.use_qlora else Strategy.LORA if use_lora
                else Strategy.FROZEN_VISION if args.freeze_vision_model else Strategy.FULL)
    bf16 = args.bf16 or (args.use_flash_attention and script.bf16_with_flash)
    if args.use_flash_attention and not bf16:
        raise UserError(f"--use_flash_attention without --bf16: finetune_hf_trainer_{task}.py would train in fp16, "
                        "which flash attention does not support (the guide's known issue) — add --bf16")
    per_device = args.batch_size_per_gpu if script.batch_size_per_gpu else 1
    if args.batch_size < 1 or per_device < 1 or args.batch_size % (per_device * world_size):
        raise UserError(f"--batch_size {args.batch_size} must be a multiple of the per-GPU batch {per_device} x "
                        f"{world_size} process(es), as the script asserts")
    precision = "bf16" if bf16 else "fp16"
    attention = args.attention or ("flash_attention_2" if args.use_flash_attention else "eager")
    # with LoRA, --freeze_vision_model leaves CLIP and the projector out of the adapter's targets
    lora = {"lora_rank": args.lora_rank, "lora_alpha": round(args.lora_rank * args.lora_alpha_ratio),
            "lora_dropout": args.lora_dropout, "lora_on_vision": not args.freeze_vision_model} if use_lora else {}
    return RunConfig(
        dataset=dataset_key(task, args), run=run_id(strategy.value, precision, attention), strategy=strategy,
        precision=precision, attention=attention, learning_rate=args.learning_rate, epochs=args.num_train_epochs,
        num_crops=args.num_crops, batch_size=args.batch_size, per_device_batch_size=per_device,
        weight_decay=args.wd, warmup_steps=50, max_grad_norm=1.0, gradient_checkpointing=True,
        checkpoint_every=None, max_steps=args.max_steps, max_train_samples=args.max_train_samples,
        seed=HF_TRAINER_SEED, deepspeed=not strategy.is_lora and not args.no_deepspeed,
        train_turns=recipe_train_turns(hub_task(task, args)),
        attention_mask="pad_id" if task == "nlvr2" else "length",  # only the NLVR2 collator masks by id
        freeze_token_embeddings=True, report_to=tuple(args.report_to), **lora)


# ---- the workflow's view -------------------------------------------------------------------------

def dataset_entry(task: str, args: argparse.Namespace) -> dict:
    """The `datasets:` entry of config.yaml for this data."""
    script = SCRIPTS[task]
    entry = {"metric": script.metric, "eval_split": script.eval_split, "num_crops": args.num_crops}
    if args.data_dir:
        return {"source": "custom", "path": str(Path(args.data_dir).resolve()), **entry}
    convert = {"eval_size": args.eval_size} if script.cauldron else {}
    model = {} if args.model_name_or_path == DEFAULT_MODEL else {"model": {"id": args.model_name_or_path}}
    return {"source": "hub", "task": hub_task(task, args), **entry, **({"convert": convert} if convert else {}),
            **model}


def workflow_config(task: str, args: argparse.Namespace, run: RunConfig, world_size: int) -> dict:
    """The config.yaml overrides that make the workflow train (and evaluate) this run."""
    row = {key: value for key, value in run.to_dict().items() if key != "run"}
    nodes = max(1, world_size // int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    return {"preset": "paper", "hardware": {"gpus_per_node": world_size // nodes, "nodes": nodes},
            "datasets": {run.dataset: dataset_entry(task, args)}, "runs": [row]}


def workflow_yaml(config: dict) -> str:
    import yaml

    return ("# config.yaml: the same run as a workflow job (snakemake --cores all)\n"
            + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110))


# ---- data and model ------------------------------------------------------------------------------

def prepare_data(task: str, args: argparse.Namespace, name: str) -> Path:
    """The converted folder: --data_dir as given, or the hub's data downloaded and converted once into the cache."""
    from phi3v.data.sources import source_function

    if args.data_dir:
        folder = Path(args.data_dir)
        if not (folder / f"{name}_train.jsonl").is_file():
            raise UserError(f"--data_dir {folder}: no {name}_train.jsonl — give the converted folder "
                            f"({name}_<split>.jsonl and images/)")
        return folder
    kind = hub_task(task, args)
    options = {"eval_size": args.eval_size} if SCRIPTS[task].cauldron else {}
    cache = Path(args.cache_dir)
    folder = cache / "data" / "-".join([name] + [f"{key}{value}" for key, value in options.items()])
    if not (folder / f"{name}_train.jsonl").is_file():
        raw = cache / "raw" / kind
        source_function("download", kind)(raw)
        source_function("convert", kind)(raw, folder, name=name, **options)
    return folder


def prepare_model(name: str, cache_dir: str) -> Path:
    """A model folder as given, or the hub's model downloaded into the cache (through the hub cache)."""
    from phi3v.data.sources.hub import download_model

    if Path(name).is_dir():
        return Path(name)
    folder = Path(cache_dir) / "models" / name.replace("/", "--")
    download_model(name, folder)
    return folder


# ---- the run -------------------------------------------------------------------------------------

def report_score(task: str, scores: dict, when: str) -> str:
    """The script's result line (a fraction, as the scripts print it)."""
    label = "Average normalized Levenshtein similarity" if task == "docvqa" else "Accuracy"
    return f"{label} {when} finetuning: {scores['score'] / 100:.4f}"


def run_recipe(task: str, args: argparse.Namespace) -> dict:
    """Evaluate the model as loaded, train, evaluate the trained model; return both scores."""
    from accelerate import PartialState

    from phi3v.evaluation.evaluate import evaluate
    from phi3v.training.model_setup import check_run, quantization_config
    from phi3v.training.train import train

    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    run = flags_to_run(task, args, world_size)
    if not args.tqdm:  # the libraries' own bars too (weight loading, downloads)
        import datasets
        import huggingface_hub
        import transformers

        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
        datasets.disable_progress_bars()
    state = PartialState()
    output_dir = Path(args.output_dir)
    with state.main_process_first():  # one process downloads and converts, the others then read
        data_dir = prepare_data(task, args, run.dataset)
        base_model = prepare_model(args.model_name_or_path, args.cache_dir)
    if state.is_main_process:
        print(f"training on {world_size} GPUs" if world_size > 1 else "training on 1 process")
        print(workflow_yaml(workflow_config(task, args, run, world_size)))

    script = SCRIPTS[task]

    def evaluate_model(model_dir: Path, run_name: str, folder: str, precision: str, quantization=None) -> dict:
        # every script generates one example at a time (NLVR2's too, whatever --batch_size_per_gpu), eos only
        return evaluate(model_dir=model_dir, data_dir=data_dir, dataset_name=run.dataset, split=script.eval_split,
                        metric=script.metric, out_dir=output_dir / folder, run_name=run_name,
                        num_crops=run.num_crops, precision=precision, attention=run.attention,
                        batch_size=1, max_new_tokens=MAX_NEW_TOKENS, max_samples=args.max_eval_samples,
                        stop_tokens="eos", quantization_config=quantization, progress=args.tqdm)

    check_run(run, state.device)  # refuse what this machine cannot do before any evaluation
    scores = {}
    if not args.skip_eval:
        # the model as the script loads it: bf16 with flash attention, else fp32; QLoRA: the 4-bit model
        as_loaded = load_precision(run)
        quantization = quantization_config(run) if run.strategy is Strategy.QLORA else None
        scores["before"] = evaluate_model(base_model, BASE_RUN, "eval_before", as_loaded, quantization)
        if state.is_main_process:
            print(report_score(task, scores["before"], "before"))
    train(run, base_model=base_model, data_dir=data_dir, dataset_name=run.dataset, out_dir=output_dir,
          checkpoint_dir=output_dir / "checkpoints", progress=args.tqdm)
    if not args.skip_eval:
        scores["after"] = evaluate_model(output_dir / MODEL, run.run, "eval_after", evaluation_precision(run))
        if state.is_main_process:
            print(report_score(task, scores["after"], "after"))
    return scores


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    task, args = parse_args(list(sys.argv[1:] if argv is None else argv))
    run_recipe(task, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
