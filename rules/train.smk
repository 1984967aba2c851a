# One fine-tuning run per row of the recipe's tables. Resumable checkpoints go to
# results/checkpoints/, which is not an output: Snakemake would delete it before a rerun.


rule train:
    input:
        base_model=results("base_model"),
        data=dataset_dir,
    output:
        model=directory(results("runs/{dataset}/{run}/model")),
        metrics=results("runs/{dataset}/{run}/metrics.json"),
        train_log=results("runs/{dataset}/{run}/train_log.jsonl"),
        provenance=results("runs/{dataset}/{run}/provenance.json"),
    log:
        results("logs/train/{dataset}/{run}.log"),
    benchmark:
        results("benchmarks/train/{dataset}/{run}.tsv")
    params:
        run_json=run_json,
        out_dir=lambda wildcards: results(f"runs/{wildcards.dataset}/{wildcards.run}"),
        checkpoint_dir=lambda wildcards: results(f"checkpoints/{wildcards.dataset}/{wildcards.run}"),
        processes=training_processes(),
    threads: resources_of("train")["threads"]
    resources:
        **job_resources("train", gpus_per_node=training_processes()[2], nodes=training_processes()[0]),
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train.py"
