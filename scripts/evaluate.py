"""Greedy-decoding evaluation of one model on one dataset's eval split (rule evaluate), on the split
lmms-eval's protocol answers (rule evaluate_lmms_eval), or of the demo's base model on every dataset
(rule evaluate_base)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def evaluate_one(*, model_dir, data_dir, dataset_name, out_dir, run_name, options):
    from phi3v.evaluation.evaluate import evaluate as evaluate_model, summary

    scores = evaluate_model(model_dir=model_dir, data_dir=data_dir, dataset_name=dataset_name, out_dir=out_dir,
                            run_name=run_name, **dict(options))
    print(f"scores: {summary(scores)}")


def evaluate():
    if snakemake.rule == "evaluate_base":  # the base model on every dataset, one after another
        params = snakemake.params
        for dataset, data_dir, out_dir, options in zip(params.datasets, snakemake.input.data, params.out_dirs,
                                                       params.options):
            evaluate_one(model_dir=snakemake.input.model, data_dir=data_dir, dataset_name=dataset, out_dir=out_dir,
                         run_name="base", options=options)
        return
    evaluate_one(
        model_dir=snakemake.input.model,
        data_dir=snakemake.input.data,
        dataset_name=snakemake.params.get("data_name", snakemake.wildcards.dataset),
        out_dir=snakemake.params.out_dir,
        run_name=snakemake.wildcards.run,
        options=snakemake.params.options,
    )


run_step(snakemake, evaluate)
