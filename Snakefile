# Fine-tune, evaluate and benchmark Phi-3.5-vision: the recipe's tables, regenerated.
# The configuration is a preset (presets/) plus overrides (config.yaml, --config); see README.md.
import os

from snakemake.utils import min_version

# Reading the workflow loads no model: no Auto-class registration (torch + transformers, ~4 s) in
# this process; the jobs' own processes register as usual.
os.environ.update(PHI3V_AUTO_CLASSES="0")
from phi3v.workflow import preflight

os.environ.pop("PHI3V_AUTO_CLASSES")

min_version("9.0")


# Snakemake's own message for a YAML syntax error in the config file has no line or column.
preflight.check_yaml_syntax("config.yaml")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/benchmark.smk"
include: "rules/tables.smk"


rule all:
    input:
        layout.tables,
        layout.figures,
    default_target: True
