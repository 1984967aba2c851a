"""One row of the speed table: img/s, tokens/s, peak memory and MFU on the benchmark shape."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from common import run_step  # noqa: E402


def benchmark_speed():
    from phi3v.training.speed import run_speed

    result = run_speed(
        dict(snakemake.params.row),
        base_model=snakemake.input.base_model,
        data_dir=snakemake.input.data,
        dataset_name=snakemake.params.dataset,
        num_crops=snakemake.params.num_crops,
        weights=snakemake.params.weights,
        steps=snakemake.params.steps,
        warmup=snakemake.params.warmup,
        out_json=snakemake.output[0],
    )
    print(f"result: {result}")


run_step(snakemake, benchmark_speed)
