"""A tiny model folder with the release's file set, and a Hugging Face cache that holds it as the hub would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.image_processing_phi3v import Phi3VImageProcessor
from phi3v.processing_phi3v import IMAGE_TOKEN, Phi3VProcessor
from phi3v.testing import write_official_checkpoint
from phi3v.training.demo_tokenizer import build_tiny_tokenizer

CORPUS = ["What is the total on the page?", "Is this meme hateful? yes no", "Describe the image briefly."] * 4
VOCAB_SIZE = 300
# The release's remote-code files; executing any of them fails loudly.
REMOTE_CODE_FILES = ("configuration_phi3_v.py", "modeling_phi3_v.py", "processing_phi3_v.py", "image_processing_phi3_v.py")
RELEASE_PREPROCESSOR_KEYS = {"auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"}}


def write_release_folder(folder: Path, num_crops: int = 4, seed: int = 0, **config_overrides) -> Path:
    """Tiny weights in the release's key layout (sharded, hub config keys incl. auto_map) plus its processor files."""
    tokenizer = build_tiny_tokenizer(CORPUS, VOCAB_SIZE)
    config = Phi3VConfig.tiny(VOCAB_SIZE, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                              pad_token_id=tokenizer.pad_token_id, **config_overrides)
    write_official_checkpoint(folder, config, seed=seed, shard_size=60_000)
    Phi3VProcessor(Phi3VImageProcessor(num_crops=num_crops, crop_size=config.crop_size), tokenizer).save_pretrained(folder)
    preprocessor = folder / "preprocessor_config.json"
    preprocessor.write_text(json.dumps({**json.loads(preprocessor.read_text()), **RELEASE_PREPROCESSOR_KEYS}, indent=2))
    for name in REMOTE_CODE_FILES:
        (folder / name).write_text(f"raise RuntimeError('remote code {name} was executed')\n")
    return folder


def write_hub_cache(hf_home: Path, repo_id: str, folder: Path, commit: str) -> Path:
    """Place `folder`'s files as huggingface_hub caches a download: snapshots/<commit>/ and refs/main."""
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
