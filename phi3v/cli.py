"""`phi3v`: everyday commands on a Phi-3.5-vision model folder (or hub id) and on a custom dataset.

    phi3v generate MODEL --image page.png --prompt "What is the total?"
    phi3v validate DATASET_FOLDER NAME
    phi3v merge-lora BASE_MODEL ADAPTER_DIR OUT_DIR
    phi3v plan --preset paper --gpu-memory-gib 80 --gpus-per-node 8
    phi3v convert-ucf101 --out_dir ./ucf101 --tmp_dir /tmp/ucf101

A mistake in the arguments or the inputs prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from phi3v.errors import UserError, entry_point
from phi3v.evaluation.inference import EVAL_PRECISIONS
from phi3v.training.run_config import ATTENTIONS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


# ---- generate ----------------------------------------------------------------------------------

def user_prompt(processor, prompt: str, num_images: int) -> str:
    """The chat prompt: as written when it places its own `<|image_k|>` tags, else the images first."""
    from phi3v.processing_phi3v import image_tag_numbers

    if image_tag_numbers(prompt) or not num_images:
        return processor.generation_prompt(prompt)
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def generate(args) -> str:
    """Greedy answer of the model to one prompt with its images."""
    import torch

    from phi3v.evaluation.inference import autocast_dtype, inference_dtype
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.image_files import load_image
    from phi3v.processing_phi3v import Phi3VProcessor, check_compatible
    from phi3v.training.devices import to_device

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = {} if args.num_crops is None else {"num_crops": args.num_crops}
    processor = Phi3VProcessor.from_pretrained(args.model, revision=args.revision, **settings)
    model = Phi3VForCausalLM.from_pretrained(args.model, revision=args.revision, dtype=inference_dtype(args.precision, device),
                                             attn_implementation=args.attention)
    check_compatible(model, processor, args.model)
    model.to(device)
    images = [load_image(path) for path in args.image]
    inputs = to_device(processor(user_prompt(processor, args.prompt, len(images)), images), device, model.dtype)
    autocast = autocast_dtype(args.precision)  # on GPU too, unlike evaluation
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                eos_token_id=processor.stop_token_ids, pad_token_id=processor.pad_token_id)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]  # (new,) after the prompt
    return processor.decode(new_tokens, skip_special_tokens=True)


# ---- validate, merge-lora ----------------------------------------------------------------------

def validate(args) -> str:
    from phi3v.data.validation import validate_or_raise

    counts = validate_or_raise(args.folder, args.name, eval_split=args.eval_split)
    return f"{args.name} in {args.folder}: OK (" + ", ".join(f"{split}: {n}" for split, n in counts.items()) + ")"


def merge_lora(args) -> str:
    """The adapter merged into the base weights, saved in the release's layout with the processor files."""
    from phi3v.files import atomic_output_dir
    from phi3v.processing_phi3v import Phi3VProcessor
    from phi3v.training.lora_adapter import adapter_config, check_adapter_base, export_merged_lora

    adapter = Path(args.adapter)
    if args.other_base:
        adapter_config(adapter)
    else:
        check_adapter_base(adapter, args.base_model)
    settings = {} if args.num_crops is None else {"num_crops": args.num_crops}
    processor = Phi3VProcessor.from_pretrained(args.base_model, **settings)
    with atomic_output_dir(args.out_dir) as folder:
        export_merged_lora(args.base_model, adapter, folder)
        processor.save_pretrained(folder)
    return f"merged {adapter} into {args.base_model}: {args.out_dir}"


# ---- plan --------------------------------------------------------------------------------------

def plan(args) -> str:
    """The memory plan of a configuration on the given GPUs, as a Markdown table."""
    from phi3v.training.memory_plan import markdown_table
    from phi3v.workflow import settings
    from phi3v.workflow import plan as memory_plan
    from phi3v.workflow.resources import local_gpu_memory_gib

    config = {}
    configfile = args.configfile or ("config.yaml" if args.preset is None and Path("config.yaml").is_file() else None)
    if configfile:
        config = settings.load_yaml(configfile)
    if args.preset:
        config["preset"] = args.preset
    hardware = {"accelerator": "cuda", **{key: value for key, value in (
        ("gpus_per_node", args.gpus_per_node), ("nodes", args.nodes), ("gpu_memory_gib", args.gpu_memory_gib))
        if value is not None}}
    config["hardware"] = {**(config.get("hardware") or {}), **hardware}
    resolved = settings.resolve_config(config)
    card_gib = memory_plan.card_memory_gib(resolved, local_gpu_memory_gib())
    if card_gib is None:
        raise UserError("no GPU memory to plan for: give --gpu-memory-gib (e.g. 80), or run on the GPU machine")
    hardware = resolved["hardware"]
    title = (f"Memory plan of preset {resolved['preset']!r}" + (f" + {configfile}" if configfile else "")
             + f": {hardware['nodes']} node(s) x {hardware['gpus_per_node']} GPU(s) of {card_gib:g} GiB\n\n")
    return title + markdown_table(memory_plan.plan_rows(resolved, card_gib), card_gib)


# ---- convert-ucf101 ------------------------------------------------------------------------------

def convert_ucf101(args) -> str:
    """The recipe's convert_ucf101.py: download the subset's archive into --tmp_dir (which must not
    exist, as there), convert it into --out_dir, then remove --tmp_dir."""
    import shutil

    from phi3v.data.sources.ucf101 import convert_ucf101 as convert, download_ucf101

    tmp_dir = Path(args.tmp_dir)
    if tmp_dir.exists():
        raise UserError(f"--tmp_dir {tmp_dir} exists — give a path that does not (it is removed afterwards)")
    try:
        download_ucf101(tmp_dir)
        counts = convert(tmp_dir, args.out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return f"UCF-101 in {args.out_dir}: " + ", ".join(f"{split}: {n['records']}" for split, n in counts.items())


# ---- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="phi3v", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    gen = commands.add_parser("generate", help="answer a prompt about one or more images",
                              description="Greedy generation from a model folder or hub id. Without <|image_k|> tags "
                                          "in the prompt the images come first, numbered in the order given.")
    gen.add_argument("model", help="model folder or hub id (e.g. microsoft/Phi-3.5-vision-instruct)")
    gen.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    gen.add_argument("--prompt", required=True, help="the user's text; may place images with <|image_1|> ...")
    gen.add_argument("--max-new-tokens", type=positive_int, default=128, help="answer length limit (default 128)")
    gen.add_argument("--precision", choices=EVAL_PRECISIONS, default="bf16",
                     help="bf16 (default), fp16 or fp32; on CPU fp32 weights with bf16/fp16 autocast")
    gen.add_argument("--attention", choices=ATTENTIONS, default="sdpa",
                     help="attention kernel (default sdpa; flash_attention_2 needs a GPU and flash-attn)")
    gen.add_argument("--num-crops", type=positive_int, help="HD crops per image (1-16; default: the folder's)")
    gen.add_argument("--revision", help="hub revision (branch, tag or commit) of a hub id")
    gen.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    gen.set_defaults(handler=generate)

    val = commands.add_parser("validate", help="check a custom dataset in the recipe's jsonl format",
                              description="Check every line of <name>_<split>.jsonl and every image; list all problems.")
    val.add_argument("folder", help="folder holding <name>_train.jsonl, <name>_val.jsonl and images/")
    val.add_argument("name", help="the <name> in <name>_<split>.jsonl")
    val.add_argument("--eval-split", default="val", choices=("val", "test"), help="split evaluated on (default val)")
    val.set_defaults(handler=validate)

    merge = commands.add_parser("merge-lora", help="merge a LoRA adapter into its base model",
                                description="Merge a peft adapter into the base weights and write a model folder in "
                                            "the release's layout (config, safetensors, processor files).")
    merge.add_argument("base_model", help="the base model folder the adapter was trained on")
    merge.add_argument("adapter", help="the adapter folder (adapter_config.json + weights)")
    merge.add_argument("out_dir", help="where to write the merged model folder (replaced if it exists)")
    merge.add_argument("--num-crops", type=positive_int, help="num_crops to save with it (default: the base's)")
    merge.add_argument("--other-base", action="store_true",
                       help="merge even though adapter_config.json names another base (the same model under "
                            "another name or path); the tensor shapes are still checked")
    merge.set_defaults(handler=merge_lora)

    plan_ = commands.add_parser("plan", help="per-GPU peak memory of every run before anything runs",
                                description="A Markdown table: for each training run and speed row of the "
                                            "configuration, the per-GPU peak memory from the model's shapes (weights, "
                                            "gradients, optimiser state, ZeRO-2 buckets, activations with and without "
                                            "checkpointing), the largest per-device batch, and whether it fits, with "
                                            "the change that would make it fit.")
    plan_.add_argument("--preset", help="a preset of presets/ (default: the one config.yaml names, else demo)")
    plan_.add_argument("--configfile", help="a config file as Snakemake's --configfile (default: ./config.yaml "
                                            "without --preset)")
    plan_.add_argument("--gpu-memory-gib", type=positive_float,
                       help="memory of one GPU in GiB (default: hardware.gpu_memory_gib, else this machine's cards)")
    plan_.add_argument("--gpus-per-node", type=positive_int, help="GPUs a node (default: the config's)")
    plan_.add_argument("--nodes", type=positive_int, help="nodes (default: the config's)")
    plan_.set_defaults(handler=plan)

    ucf = commands.add_parser("convert-ucf101", help="the recipe's convert_ucf101.py (download and convert)",
                              description="Download the recipe's UCF-101 subset and convert it to the recipe's "
                                          "format: ucf101_{train,val,test}.jsonl and 8 frames a video under images/.")
    ucf.add_argument("--out_dir", default="./ucf101", help="the converted folder (default %(default)s)")
    ucf.add_argument("--tmp_dir", default="/tmp/ucf101", help="download folder, must not exist; removed afterwards "
                                                             "(default %(default)s)")
    ucf.set_defaults(handler=convert_ucf101)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(args.handler(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
