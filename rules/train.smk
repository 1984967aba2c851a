# One fine-tuning run per row of the recipe's tables. Resumable checkpoints go to
# results/checkpoints/, which is not an output: Snakemake would delete it before a rerun.


rule train:
    input:
        base_model=base_model_of,
        data=dataset_dir,
    output:
        model=directory(layout.model("{dataset}", "{run}")),
        metrics=layout.metrics("{dataset}", "{run}"),
        train_log=layout.train_log("{dataset}", "{run}"),
        provenance=layout.provenance("{dataset}", "{run}"),
    log:
        layout.log("train", "{dataset}", "{run}"),
    benchmark:
        layout.benchmark("train", "{dataset}", "{run}")
    params:
        run_json=run_json,
        out_dir=lambda wildcards: layout.run_dir(wildcards.dataset, wildcards.run),
        checkpoint_dir=lambda wildcards: layout.checkpoints(wildcards.dataset, wildcards.run),
        launch=training_launch,
    priority: run_priority
    threads: resources_of("train")["threads"]
    resources:
        **training_job_resources(),
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train.py"
