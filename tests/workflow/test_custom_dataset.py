"""A custom dataset in the recipe's format goes through the `validate` rule before anything uses it."""

import json
import shutil

from PIL import Image

from .helpers import run_snakemake


def write_dataset(folder, bad_line: bool):
    (folder / "images").mkdir(parents=True)
    for name, colour in [("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))]:
        Image.new("RGB", (40, 30), colour).save(folder / "images" / name)
    def record(rid, image, answer):
        return {"id": rid, "source": "shapes",
                "conversations": [{"images": [image], "user": "What colour is it?", "assistant": answer},
                                  {"user": "Are you sure?", "assistant": "Yes."}]}
    train = [record("train-0", "red.png", "red"), record("train-1", "missing.png" if bad_line else "blue.png", "blue")]
    val = [record("val-0", "blue.png", "blue")]
    for split, records in [("train", train), ("val", val)]:
        (folder / f"shapes_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_validate_rule_refuses_a_bad_dataset_and_links_a_good_one(tmp_path):
    data, results = tmp_path / "shapes", tmp_path / "results"
    config = [
        f"results_dir={results}",
        f"datasets={{shapes: {{source: custom, path: {data}, metric: accuracy, eval_split: val, num_crops: 1}}}}",
    ]
    target = str(results / "data" / "shapes")

    write_dataset(data, bad_line=True)
    bad = run_snakemake(target, "--cores", "1", "--config", *config)
    assert bad.returncode != 0
    log = (results / "logs" / "validate" / "shapes.log").read_text()
    assert f"{data / 'shapes_train.jsonl'}:2:" in log and "missing.png" in log
    assert not (results / "data" / "shapes").exists()  # nothing Snakemake would take as done

    shutil.rmtree(data)
    write_dataset(data, bad_line=False)
    good = run_snakemake(target, "--cores", "1", "--config", *config)
    assert good.returncode == 0, good.stderr[-3000:]
    stats = json.loads((results / "data" / "shapes" / "stats_train.json").read_text())
    assert stats["samples"] == 2
    assert (results / "data" / "shapes" / "shapes_val.jsonl").is_file()
