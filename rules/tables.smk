# The recipe's tables regenerated from the results, and figures, for `snakemake --report`.


rule tables:
    input:
        unpack(result_files),
    output:
        tables=report(
            directory(layout.tables),
            patterns=["{name}.md"],
            category="Tables",
            labels={"table": "{name}"},
        ),
        readme=layout.readme,
    log:
        layout.log("tables"),
    params:
        config=config,
    threads: resources_of("tables")["threads"]
    resources:
        **job_resources("tables"),
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/tables.py"


rule figures:
    input:
        unpack(result_files),
    output:
        report(
            directory(layout.figures),
            patterns=["{name}.png"],
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        layout.log("figures"),
    params:
        config=config,
    threads: resources_of("tables")["threads"]
    resources:
        **job_resources("tables"),
    conda:
        "../envs/tables.yaml"
    script:
        "../scripts/figures.py"
