"""The local hub cache (phi3v.hub_cache): huggingface_hub reads it as its own, and every downloader of the
project resolves from it offline, as on a user's machine after a download; the downloads then convert."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from PIL import Image
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
from safetensors import safe_open

from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.data.validation import validate_dataset
from phi3v.data.sources import cauldron, docvqa, hub, ucf101
from phi3v.hub_cache import MODEL_ID, PHI3_VISION_ID, main
from phi3v.testing import official_key_shapes

REPOS = {MODEL_ID: "model", PHI3_VISION_ID: "model", docvqa.REPO_ID: "dataset", cauldron.REPO_ID: "dataset",
         docvqa.VAL_REPO_ID: "dataset", ucf101.HUB_REPO_ID: "dataset"}


def test_huggingface_hub_reads_the_cache_as_its_own(offline_hub):
    report = scan_cache_dir(offline_hub.hub_dir)
    assert report.warnings == []
    assert {(r.repo_id, r.repo_type) for r in report.repos} == set(REPOS.items())
    for repo in report.repos:
        (revision,) = repo.revisions
        assert revision.commit_hash == offline_hub.commits[repo.repo_id] and revision.refs == {"main"}
    assert offline_hub.build_seconds < 15
    # the library's own resolvers, with no argument but the hub id
    config = hf_hub_download(MODEL_ID, "config.json")
    assert Path(config).parent.name == offline_hub.commits[MODEL_ID]
    archive = hf_hub_download(ucf101.HUB_REPO_ID, ucf101.ARCHIVE_NAME, repo_type="dataset")
    assert Path(archive).stat().st_size > 0
    snapshot = Path(snapshot_download(cauldron.REPO_ID, repo_type="dataset", allow_patterns=["nlvr2/*"]))
    assert len(list((snapshot / "nlvr2").glob("train-0000?-of-00002-*.parquet"))) == 2
    # the tree listing (sizes as the hub publishes them) describes the snapshot's files
    docvqa_snapshot = Path(snapshot_download(docvqa.REPO_ID, repo_type="dataset"))
    tree = {f.path: f.size for f in huggingface_hub.get_cached_repo_tree(docvqa.REPO_ID, repo_type="dataset")}
    assert tree == {p.relative_to(docvqa_snapshot).as_posix(): p.stat().st_size
                    for p in docvqa_snapshot.rglob("*") if p.is_file()}


def test_the_model_repo_has_the_releases_file_set(offline_hub):
    snapshot = Path(snapshot_download(MODEL_ID))
    config = json.loads((snapshot / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su"
    assert config["auto_map"] == {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                                  "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"}
    tokenizer_config = json.loads((snapshot / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer" and "<|assistant|>" in tokenizer_config["chat_template"]
    added = json.loads((snapshot / "added_tokens.json").read_text())
    assert {"<|endoftext|>", "<|end|>", "<|image|>"} <= set(added)
    assert set(json.loads((snapshot / "special_tokens_map.json").read_text())) == {
        "bos_token", "eos_token", "pad_token", "unk_token"}
    processor = json.loads((snapshot / "preprocessor_config.json").read_text())
    assert processor["num_crops"] == 4 and processor["image_processor_type"] == "Phi3VImageProcessor"
    assert processor["auto_map"]["AutoProcessor"] == "processing_phi3_v.Phi3VProcessor"
    assert json.loads((snapshot / "generation_config.json").read_text())["eos_token_id"]

    # two shards and an index holding exactly the release's key names
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    expected = official_key_shapes(Phi3VConfig.from_pretrained(snapshot))
    assert set(index["weight_map"]) == set(expected)
    with safe_open(snapshot / "model-00002-of-00002.safetensors", "pt") as shard:
        name = next(iter(shard.keys()))
        assert shard.get_tensor(name).dtype == torch.bfloat16 and tuple(shard.get_tensor(name).shape) == expected[name]


def _check_source(raw: Path, record: dict, repo_id: str, commit: str) -> None:
    """SOURCE.json = the record; every file's size and sha256 are the placed file's."""
    assert json.loads((raw / hub.SOURCE_FILE).read_text()) == record
    assert record["repo_id"] == repo_id and record["commit"] == commit and record["revision"] is None
    for name, published in record["files"].items():
        data = (raw / name).read_bytes()
        assert published["size"] == len(data)
        if name.endswith((".parquet", ".safetensors", ".tar.gz")):
            assert published["sha256"] == hashlib.sha256(data).hexdigest()


def test_docvqa_downloads_from_the_cache_and_converts(offline_hub, tmp_path):
    record = docvqa.download_docvqa(tmp_path / "raw")
    _check_source(tmp_path / "raw", record, docvqa.REPO_ID, offline_hub.commits[docvqa.REPO_ID])
    assert sorted(Path(name).name.split("-")[0] for name in record["files"]) == ["test", "train"]
    summary = docvqa.convert_docvqa(tmp_path / "raw", tmp_path / "out")
    assert {split: counts["records"] for split, counts in summary.items()} == {"test": 4, "train": 6}
    assert validate_dataset(tmp_path / "out", "docvqa", splits=("train", "test")) == []


def test_docvqa_full_train_downloads_both_repos_and_converts(offline_hub, tmp_path):
    records = docvqa.download_docvqa_full(tmp_path / "raw")
    _check_source(tmp_path / "raw/nielsr", records["mini"], docvqa.REPO_ID, offline_hub.commits[docvqa.REPO_ID])
    _check_source(tmp_path / "raw/cauldron-docvqa", records["cauldron"], cauldron.REPO_ID,
                  offline_hub.commits[cauldron.REPO_ID])
    assert len(records["cauldron"]["files"]) == 2  # both shards of the configuration
    summary = docvqa.convert_docvqa_full(tmp_path / "raw", tmp_path / "out")
    assert {split: counts["records"] for split, counts in summary.items()} == {"test": 4, "train": 8}


@pytest.mark.parametrize("task", ["hateful_memes", "nlvr2"])
def test_cauldron_configuration_downloads_and_converts(task, offline_hub, tmp_path):
    download = getattr(cauldron, f"download_{task}")
    record = download(tmp_path / "raw")
    _check_source(tmp_path / "raw", record, cauldron.REPO_ID, offline_hub.commits[cauldron.REPO_ID])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["SOURCE.json", task]
    summary = getattr(cauldron, f"convert_{task}")(tmp_path / "raw", tmp_path / "out", eval_size=3)
    # rows keep their hub order across the two shards: the first 3 are the evaluation split
    assert {split: counts["records"] for split, counts in summary.items()} == {"test": 3, "train": 5}
    assert validate_dataset(tmp_path / "out", task, splits=("train", "test")) == []


def test_ucf101_downloads_from_the_cache_and_converts(offline_hub, tmp_path):
    archive = ucf101.download_ucf101(tmp_path / "raw")
    record = hub.read_source_record(tmp_path / "raw")
    _check_source(tmp_path / "raw", record, ucf101.HUB_REPO_ID, offline_hub.commits[ucf101.HUB_REPO_ID])
    assert list(record["files"]) == [ucf101.ARCHIVE_NAME] and archive.is_file()
    summary = ucf101.convert_ucf101(tmp_path / "raw", tmp_path / "out")
    assert {split: counts["records"] for split, counts in summary.items()} == {"train": 20, "val": 10, "test": 10}


def test_the_model_downloads_without_remote_code_and_loads(offline_hub, tmp_path):
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.processing_phi3v import Phi3VProcessor

    out = tmp_path / "base_model"
    record = hub.download_model(MODEL_ID, out)
    _check_source(out, record, MODEL_ID, offline_hub.commits[MODEL_ID])
    assert not list(out.glob("*.py")) and not (out / "README.md").exists()
    assert json.loads((out / "provenance.json").read_text()) == {
        "model": {"id": MODEL_ID, "revision": offline_hub.commits[MODEL_ID]}}
    model = Phi3VForCausalLM.from_pretrained(out, dtype=torch.float32)
    processor = Phi3VProcessor.from_pretrained(out)
    assert processor.image_processor.num_crops == 4
    # the hub id resolves through transformers' own hub code to the same weights
    by_id = Phi3VForCausalLM.from_pretrained(MODEL_ID, dtype=torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), by_id.state_dict().values()))

    config_only = hub.download_model(MODEL_ID, tmp_path / "model_config", weights=False)
    assert not [name for name in config_only["files"] if name.endswith(".safetensors")]


def test_cli_rebuilds_the_same_commits(test_hub, tmp_path, capsys):
    main(["--hf-home", str(tmp_path / "home")])
    printed = capsys.readouterr().out
    assert all(f"{repo_id}@{commit}" in printed for repo_id, commit in test_hub.commits.items())
    assert json.loads((tmp_path / "home/commits.json").read_text()) == test_hub.commits


def _schema_tasks() -> list[str]:
    schema = yaml.safe_load((Path(__file__).parents[2] / "schemas/config.schema.yaml").read_text())
    return schema["$defs"]["dataset"]["properties"]["task"]["enum"]


@pytest.mark.parametrize("task", _schema_tasks())
def test_every_task_of_the_schema_has_its_download_and_convert(task):
    from phi3v.data.sources import source_function

    assert callable(source_function("download", task)) and callable(source_function("convert", task))


def test_phi3_vision_loads_through_the_same_classes_from_its_release_layout(offline_hub, tmp_path):
    """`datasets.<d>.model: microsoft/Phi-3-vision-128k-instruct` (the model of the recipe's DocVQA and Hateful
    Memes tables): its own config.json (`su` rope scaling at 128k positions) and processor files load
    through Phi3VForCausalLM and Phi3VProcessor, and its long-context factors apply past 4096 positions."""
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.processing_phi3v import Phi3VProcessor

    out = tmp_path / "phi3_vision"
    hub.download_model(PHI3_VISION_ID, out)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["type"] == "su" and config["max_position_embeddings"] == 131072
    assert config["original_max_position_embeddings"] == 4096
    model = Phi3VForCausalLM.from_pretrained(out, dtype=torch.float32)
    processor = Phi3VProcessor.from_pretrained(out)
    assert processor.image_processor.num_crops == 16
    assert model.config.rope_parameters["rope_type"] == "longrope"
    # the long-context attention factor of `su` at 128k: sqrt(1 + ln(131072 / 4096) / ln(4096))
    assert model.model.rotary_emb.attention_scaling == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    inputs = processor(processor.generation_prompt("<|image_1|>\nWhat is it?"),
                       [Image.new("RGB", (60, 40), (200, 30, 30))])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
