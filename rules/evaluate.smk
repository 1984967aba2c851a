# Greedy-decoding evaluation of every run, and of the base model (`base`) on every dataset.


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
