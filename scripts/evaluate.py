"""Greedy-decoding evaluation of one model on one dataset's eval split (rule evaluate), or on the split
lmms-eval's protocol answers (rule evaluate_lmms_eval)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def evaluate():
    from phi3v.evaluation.evaluate import evaluate as evaluate_model, summary

    scores = evaluate_model(
        model_dir=snakemake.input.model,
        data_dir=snakemake.input.data,
        dataset_name=snakemake.params.get("data_name", snakemake.wildcards.dataset),
        out_dir=snakemake.params.out_dir,
        run_name=snakemake.wildcards.run,
        **dict(snakemake.params.options),
    )
    print(f"scores: {summary(scores)}")


run_step(snakemake, evaluate)
