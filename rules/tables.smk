# The recipe's tables regenerated from the results, and figures, for `snakemake --report`.


rule tables:
    input:
        scores=all_scores(),
        metrics=all_train_metrics(),
        speed=all_speed_results(),
        data=all_data_stats(),
    output:
        report(
            directory(results("tables")),
            patterns=["{name}.md"],
            category="Tables",
            labels={"table": "{name}"},
        ),
    log:
        results("logs/tables.log"),
    params:
        config=config,
        results_dir=lambda wildcards, output: os.path.dirname(output[0]),
    threads: resources_of("tables")["threads"]
    resources:
        **job_resources("tables"),
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/tables.py"


rule figures:
    input:
        scores=all_scores(),
        metrics=all_train_metrics(),
        speed=all_speed_results(),
    output:
        report(
            directory(results("figures")),
            patterns=["{name}.png"],
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        results("logs/figures.log"),
    params:
        config=config,
        results_dir=lambda wildcards, output: os.path.dirname(output[0]),
    threads: resources_of("tables")["threads"]
    resources:
        **job_resources("tables"),
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/figures.py"
