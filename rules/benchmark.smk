# The rows of the recipe's speed table: training throughput, memory and MFU on the DocVQA shape.


rule benchmark_speed:
    input:
        # random weights need only the model's config and tokenizer, not its (pre-)trained weights
        base_model=layout.model_config if config["speed"]["weights"] == "random" else layout.base_model,
        data=layout.data(config["speed"]["dataset"]),
    output:
        layout.speed("{row}"),
    log:
        layout.log("speed", "{row}"),
    benchmark:
        layout.benchmark("speed", "{row}")
    params:
        run_json=speed_run_json,
        weights=config["speed"]["weights"],
        warmup=config["speed"]["warmup"],
        launch=speed_row_launch,
    threads: resources_of("benchmark")["threads"]
    resources:
        **speed_row_job_resources(),
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/benchmark_speed.py"
