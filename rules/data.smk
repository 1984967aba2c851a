# Datasets: raw folders in the hub's layouts (synthesized for the demo, downloaded for the paper),
# converted to the recipe's jsonl format with per-split statistics; custom datasets are validated.


rule synthesize_raw:
    output:
        directory(layout.raw("{dataset}")),
    log:
        layout.log("synthesize_raw", "{dataset}"),
    wildcard_constraints:
        dataset=settings.wildcard_pattern(settings.datasets_by_source(config, "synthetic")),
    params:
        task=lambda wildcards: config["datasets"][wildcards.dataset]["task"],
        seed=lambda wildcards: config["datasets"][wildcards.dataset]["seed"],
        sizes=lambda wildcards: config["datasets"][wildcards.dataset]["sizes"],
    threads: resources_of("data")["threads"]
    resources:
        **job_resources("data"),
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/raw_dataset.py"


rule download_raw:
    output:
        directory(layout.raw("{dataset}")),
    log:
        layout.log("download_raw", "{dataset}"),
    wildcard_constraints:
        dataset=settings.wildcard_pattern(settings.datasets_by_source(config, "hub")),
    params:
        task=lambda wildcards: config["datasets"][wildcards.dataset]["task"],
        revision=lambda wildcards: config["datasets"][wildcards.dataset]["revision"],
        cache_dir=config["model"]["cache_dir"],
    threads: resources_of("data")["threads"]
    resources:
        **job_resources("data"),
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/raw_dataset.py"


# Conversion and statistics run in one job: the statistics live inside the dataset folder, and
# Snakemake allows no output inside another rule's directory output.
rule convert:
    input:
        layout.raw("{dataset}"),
    output:
        directory(layout.data("{dataset}")),
    log:
        layout.log("convert", "{dataset}"),
    wildcard_constraints:
        dataset=settings.wildcard_pattern(
            settings.datasets_by_source(config, "synthetic") + settings.datasets_by_source(config, "hub")
        ),
    params:
        task=lambda wildcards: config["datasets"][wildcards.dataset]["task"],
        options=lambda wildcards: config["datasets"][wildcards.dataset]["convert"],
        num_crops=lambda wildcards: config["datasets"][wildcards.dataset]["num_crops"],
    threads: resources_of("data")["threads"]
    resources:
        **job_resources("data"),
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/convert.py"


# A custom dataset is checked (every line, every image) before anything trains on it, then linked
# into results/data/ like the converted ones.
rule validate:
    input:
        lambda wildcards: config["datasets"][wildcards.dataset]["path"],
    output:
        directory(layout.data("{dataset}")),
    log:
        layout.log("validate", "{dataset}"),
    wildcard_constraints:
        dataset=settings.wildcard_pattern(settings.datasets_by_source(config, "custom")),
    params:
        num_crops=lambda wildcards: config["datasets"][wildcards.dataset]["num_crops"],
        eval_split=lambda wildcards: config["datasets"][wildcards.dataset]["eval_split"],
    threads: resources_of("data")["threads"]
    resources:
        **job_resources("data"),
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/validate.py"


rule pretrain_corpus:
    output:
        directory(layout.pretrain_corpus),
    log:
        layout.log("pretrain_corpus"),
    params:
        seed=config["pretrain"]["seed"],
        size=config["pretrain"]["corpus_size"],
    threads: resources_of("data")["threads"]
    resources:
        **job_resources("data"),
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/pretrain_corpus.py"
