# The base model every run starts from: a tiny model pre-trained here (demo) or the hub's weights.

if config["model"]["source"] == "demo":

    # The model without its weights (config, tokenizer, processor files): all the speed rows need
    # when they measure random weights, so they run beside the pre-training.
    rule build_demo_model_config:
        input:
            corpus=layout.pretrain_corpus,
            # Every defined dataset, not only the selected ones: the tokenizer's vocabulary, and so
            # every run's weights, must not depend on `runs_filter` (nor on `evaluation.lmms_eval`).
            datasets=[layout.data(dataset) for dataset in settings.tokenizer_datasets(config)],
        output:
            directory(layout.model_config),
        log:
            layout.log("build_demo_model_config"),
        benchmark:
            layout.benchmark("build_demo_model_config")
        params:
            vocab_size=config["pretrain"]["vocab_size"],
        threads: resources_of("model")["threads"]
        resources:
            **job_resources("model"),
        conda:
            "../envs/train.yaml"
        script:
            "../scripts/build_demo_model_config.py"


    rule build_demo_model:
        input:
            model_config=layout.model_config,
            corpus=layout.pretrain_corpus,
        output:
            directory(layout.base_model),
        log:
            layout.log("build_demo_model"),
        benchmark:
            layout.benchmark("build_demo_model")
        params:
            steps=config["pretrain"]["steps"],
            seed=config["pretrain"]["seed"],
        # the critical path (every training waits for it): first, while the speed rows fill the other cores
        priority: 100
        threads: resources_of("model")["threads"]
        resources:
            **job_resources("model"),
        conda:
            "../envs/train.yaml"
        script:
            "../scripts/build_demo_model.py"

else:

    # The model's config and tokenizer without its weights: all the speed rows need when they
    # measure random weights (speed.weights: random).
    rule download_model_config:
        output:
            directory(layout.model_config),
        log:
            layout.log("download_model_config"),
        params:
            repo_id=config["model"]["id"],
            revision=config["model"]["revision"],
            cache_dir=config["model"]["cache_dir"],
            weights=False,
        threads: resources_of("model")["threads"]
        resources:
            **job_resources("model"),
        conda:
            "../envs/data.yaml"
        script:
            "../scripts/download_model.py"


    rule download_model:
        output:
            directory(layout.base_model),
        log:
            layout.log("download_model"),
        params:
            repo_id=config["model"]["id"],
            revision=config["model"]["revision"],
            cache_dir=config["model"]["cache_dir"],
            weights=True,
        threads: resources_of("model")["threads"]
        resources:
            **job_resources("model"),
        conda:
            "../envs/data.yaml"
        script:
            "../scripts/download_model.py"


    # A dataset's own base model (`datasets.<name>.model`), e.g. the Phi-3-vision the recipe measured
    # its DocVQA and Hateful Memes tables with.
    rule download_dataset_model:
        output:
            directory(layout.dataset_base_model("{model_key}")),
        log:
            layout.log("download_dataset_model", "{model_key}"),
        params:
            repo_id=lambda wildcards: settings.dataset_models(config)[wildcards.model_key]["id"],
            revision=lambda wildcards: settings.dataset_models(config)[wildcards.model_key]["revision"],
            cache_dir=config["model"]["cache_dir"],
            weights=True,
        threads: resources_of("model")["threads"]
        resources:
            **job_resources("model"),
        conda:
            "../envs/data.yaml"
        script:
            "../scripts/download_model.py"
