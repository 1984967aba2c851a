# Greedy-decoding evaluation of every run, and of the base model (`base`) on every dataset.


rule evaluate:
    input:
        model=model_to_evaluate,
        data=dataset_dir,
    output:
        predictions=results("eval/{dataset}/{run}/predictions.jsonl"),
        scores=results("eval/{dataset}/{run}/scores.json"),
    log:
        results("logs/evaluate/{dataset}/{run}.log"),
    benchmark:
        results("benchmarks/evaluate/{dataset}/{run}.tsv")
    params:
        options=lambda wildcards: settings.evaluation_options(config, wildcards.dataset, wildcards.run),
        out_dir=lambda wildcards: results(f"eval/{wildcards.dataset}/{wildcards.run}"),
    threads: resources_of("evaluate")["threads"]
    resources:
        **job_resources("evaluate", gpus_per_job()),
    conda:
        "../envs/evaluate.yaml"
    script:
        "../scripts/evaluate.py"
