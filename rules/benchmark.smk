# The rows of the recipe's speed table: training throughput, memory and MFU on the DocVQA shape.


rule benchmark_speed:
    input:
        # random weights from a hub model need only its config and tokenizer, not its weights
        base_model=results(
            "model_config"
            if config["speed"]["weights"] == "random" and config["model"]["source"] == "hub"
            else "base_model"
        ),
        data=results(f"data/{config['speed']['dataset']}"),
    output:
        results("speed/{row}.json"),
    log:
        results("logs/speed/{row}.log"),
    benchmark:
        results("benchmarks/speed/{row}.tsv")
    params:
        row=lambda wildcards: settings.speed_row(config, wildcards.row),
        dataset=config["speed"]["dataset"],
        num_crops=config["speed"]["num_crops"],
        weights=config["speed"]["weights"],
        steps=config["speed"]["steps"],
        warmup=config["speed"]["warmup"],
    threads: resources_of("benchmark")["threads"]
    resources:
        **speed_row_job_resources(),
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/benchmark_speed.py"
