# Greedy-decoding evaluation of every run, and of the base model (`base`) on every dataset; with
# `evaluation.lmms_eval`, each DocVQA evaluation also answers DocVQA validation as lmms-eval does.


rule evaluate:
    input:
        model=model_to_evaluate,
        data=dataset_dir,
    output:
        predictions=layout.predictions("{dataset}", "{run}"),
        scores=layout.scores("{dataset}", "{run}"),
    log:
        layout.log("evaluate", "{dataset}", "{run}"),
    benchmark:
        layout.benchmark("evaluate", "{dataset}", "{run}")
    params:
        options=lambda wildcards: settings.evaluation_options(config, wildcards.dataset, wildcards.run),
        out_dir=lambda wildcards: layout.eval_dir(wildcards.dataset, wildcards.run),
    priority: run_priority
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate", gpus_per_job()),
    conda:
        "../envs/evaluate.yaml"
    script:
        "../scripts/evaluate.py"


rule evaluate_lmms_eval:
    input:
        model=model_to_evaluate,
        data=layout.data(config["evaluation"]["lmms_eval_dataset"]),  # DocVQA validation
    output:
        predictions=layout.lmms_eval_predictions("{dataset}", "{run}"),
        scores=layout.lmms_eval_scores("{dataset}", "{run}"),
    log:
        layout.log("evaluate_lmms_eval", "{dataset}", "{run}"),
    benchmark:
        layout.benchmark("evaluate_lmms_eval", "{dataset}", "{run}")
    params:
        options=lambda wildcards: settings.lmms_eval_options(config, wildcards.dataset, wildcards.run),
        data_name=config["evaluation"]["lmms_eval_dataset"],
        out_dir=lambda wildcards: layout.lmms_eval_dir(wildcards.dataset, wildcards.run),
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate", gpus_per_job()),
    conda:
        "../envs/evaluate.yaml"
    script:
        "../scripts/evaluate.py"
