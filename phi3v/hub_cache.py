"""A local Hugging Face cache (`HF_HOME`) holding every hub repository the paper preset downloads.

With `HF_HUB_OFFLINE=1` and `HF_HOME` pointing at it, the project's downloaders and `from_pretrained(hub id)`
resolve through huggingface_hub's own cache code, exactly as on a machine that has downloaded the real
repositories once. It holds small stand-ins in the real file layouts:

- `microsoft/Phi-3.5-vision-instruct`: a tiny-width model (random weights, the release's key layout, bf16
  safetensors shards with an index) and the release's file set: `config.json` (with `auto_map`), generation,
  tokenizer and preprocessor configs. The release's remote-code `.py` files are stand-ins that refuse to run.
- `microsoft/Phi-3-vision-128k-instruct`: the same in its own release's settings (128k positions with `su`
  rope scaling, num_crops 16), the model of the recipe's DocVQA and Hateful Memes tables.
- `nielsr/docvqa_1200_examples`, `HuggingFaceM4/the_cauldron` (`docvqa`, `hateful_memes`, `nlvr2`),
  `lmms-lab-encoder/DocVQA` (config `DocVQA`, validation only: lmms-eval's `docvqa_val`) and
  `sayakpaul/ucf101-subset`, written by the demo's synthesizers.

The cache layout (`<repo folder>/{blobs,refs,snapshots,trees}`) follows huggingface_hub's documented format
(https://huggingface.co/docs/hub/local-cache); it is written by hand because huggingface_hub only fills a cache
by downloading. CLI: `python -m phi3v.hub_cache --hf-home DIR`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from huggingface_hub.file_download import repo_folder_name

from phi3v.configuration_phi3v import Phi3VConfig
from phi3v.data.sources import cauldron, docvqa, ucf101
from phi3v.files import atomic_output_dir

MODEL_ID = "microsoft/Phi-3.5-vision-instruct"
# The model of the recipe's DocVQA and Hateful Memes tables (`datasets.<d>.model`): the same classes load its
# release layout; it differs in its 128k rope settings and its processor's num_crops (16; Phi-3.5's: 4).
PHI3_VISION_ID = "microsoft/Phi-3-vision-128k-instruct"
RELEASES = {
    MODEL_ID: {"title": "Phi-3.5-vision-instruct", "num_crops": 4, "config": {}},
    PHI3_VISION_ID: {"title": "Phi-3-vision-128k-instruct", "num_crops": 16,
                     "config": {"max_position_embeddings": 131072}},
}
# Files the hub stores in git LFS (as the repositories' .gitattributes do); the others are plain git blobs.
LFS_SUFFIXES = (".safetensors", ".parquet", ".tar.gz", ".model", ".bin")
TREE_CACHE_FORMAT_VERSION = 1  # the `trees/<commit>.json` listing huggingface_hub writes after a snapshot download

# Rows a split (videos a class for UCF-101): enough for every converter's rules, small enough to build in seconds.
DOCVQA_SIZES = {"train": 6, "test": 4}
CAULDRON_SIZES = {"test": 3, "train": 5}  # `test` = the first rows of the hub's train split (convert with eval_size 3)
CAULDRON_SHARDS = 2
UCF101_SIZES = {"train": 2, "val": 1, "test": 1}
DOCVQA_VAL_SIZE = 4
DOCVQA_VAL_SHARDS = 2  # the hub's validation split has 6 shards: more than one, as there
TINY_VOCAB_SIZE = 320


# ---------------------------------------------------------------------------------------------
# The cache layout
# ---------------------------------------------------------------------------------------------


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's bytes (the hub's etag for files outside LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def _tree_entry(data: bytes, path: str) -> tuple[str, dict]:
    """(blob file name, tree-listing entry) of one file: LFS files are named by sha256, others by git blob id."""
    if not is_lfs(path):
        blob = git_blob_id(data)
        return blob, {"size": len(data), "blob_id": blob}
    sha256 = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
    return sha256, {"size": len(data), "blob_id": git_blob_id(pointer), "lfs_sha256": sha256, "lfs_size": len(data)}


def write_cached_repo(hub_dir: str | os.PathLike, repo_id: str, files: dict[str, bytes], *,
                      repo_type: str = "model", ref: str = "main") -> str:
    """Write `files` (repo path -> bytes) as one commit of `repo_id` in a hub cache folder; return the commit.

    Lays out what `snapshot_download` leaves: `blobs/<etag>`, `snapshots/<commit>/<path>` as relative symlinks
    to the blobs, `refs/<ref>` holding the commit, and the tree listing `trees/<commit>.json` (sizes, LFS sha256).
    The commit id is a hash of the contents, so the same files give the same commit.
    """
    storage = Path(hub_dir) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    entries = {path: _tree_entry(data, path) for path, data in sorted(files.items())}
    commit = hashlib.sha1(json.dumps({p: e for p, (_, e) in entries.items()}, sort_keys=True).encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    for path, (blob, _) in entries.items():
        blob_path = storage / "blobs" / blob
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        blob_path.write_bytes(files[path])
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob_path, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    listing = {"format_version": TREE_CACHE_FORMAT_VERSION, "files": {p: e for p, (_, e) in entries.items()}}
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps(listing, indent=1))
    return commit


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative posix path (SOURCE.json of a synthesizer left out)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "SOURCE.json"}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def tiny_release_config(vocab_size: int, **overrides) -> Phi3VConfig:
    """The tiny architecture on the release's 336-px crops, so preprocessor_config.json is the release's own."""
    tiny = Phi3VConfig.tiny(vocab_size)
    vision = {**tiny.vision_config.to_dict(), "image_size": 336}
    return Phi3VConfig.tiny(vocab_size, vision_config=vision,
                            img_processor={**tiny.img_processor, "num_img_tokens": 144}, dtype="bfloat16",
                            **overrides)


def _tokenizer_files(tokenizer, folder: Path) -> None:
    """tokenizer.json plus the release's tokenizer_config.json, special_tokens_map.json and added_tokens.json
    (the transformers-4 formats the release ships, chat template inside tokenizer_config.json)."""
    from phi3v.processing_phi3v import BOS, CHAT_TEMPLATE, PAD, UNK

    tokenizer.save_pretrained(folder)
    for written in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (folder / written).unlink(missing_ok=True)
    decoder = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
    }
    config = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": PAD, "legacy": False,
        "model_max_length": 131072, "pad_token": PAD, "padding_side": "right", "processor_class": "Phi3VProcessor",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": UNK,
        "use_default_system_prompt": False,
    }
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special = {"bos_token": BOS, "eos_token": PAD, "pad_token": PAD, "unk_token": UNK}
    first_added = min(i for i, t in tokenizer.added_tokens_decoder.items() if t.content == PAD)
    added = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if i >= first_added}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", {k: {"content": v, **token} for k, v in special.items()})
    _write_json(folder / "added_tokens.json", added)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_model_folder(folder: str | os.PathLike, seed: int = 0, release: str = MODEL_ID) -> None:
    """The release's file set with a tiny-width model: weights in two bf16 shards and an index, configs, tokenizer
    (`release`: one of RELEASES)."""
    from phi3v.image_processing_phi3v import CLIP_MEAN, CLIP_STD
    from phi3v.processing_phi3v import END, IMAGE_TOKEN
    from phi3v.training.demo_tokenizer import build_tiny_tokenizer
    from phi3v.testing import official_key_shapes, write_official_checkpoint

    folder = Path(folder)
    # "Yes." and "No." often enough to be whole tokens: AUROC reads their first tokens at one position.
    corpus = [docvqa.PROMPT_SUFFIX.strip(), "Yes. No. 0 1 2 3 4 5 6 7 8 9",
              ucf101.classification_prompt(ucf101.CLASS_NAMES)] + ["Yes. No."] * 20
    tokenizer = build_tiny_tokenizer(corpus, TINY_VOCAB_SIZE)
    vocab = tokenizer.get_vocab()
    config = tiny_release_config(TINY_VOCAB_SIZE, image_token_id=vocab[IMAGE_TOKEN],
                                 pad_token_id=tokenizer.pad_token_id, **RELEASES[release]["config"])
    total_bytes = 2 * sum(math.prod(shape) for shape in official_key_shapes(config).values())  # bf16
    # two shards, as the release has: the first about 60 % of the bytes
    write_official_checkpoint(folder, config, seed=seed, shard_size=total_bytes * 3 // 5, dtype=torch.bfloat16)
    _tokenizer_files(tokenizer, folder)
    _write_json(folder / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": [vocab[END], vocab["<|assistant|>"], tokenizer.pad_token_id],
        "pad_token_id": tokenizer.pad_token_id, "transformers_version": "4.38.1",
    })
    _write_json(folder / "preprocessor_config.json", {
        "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                     "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor"},
        "image_mean": list(CLIP_MEAN), "image_processor_type": "Phi3VImageProcessor",
        "image_std": list(CLIP_STD), "num_crops": RELEASES[release]["num_crops"],
        "num_img_tokens": 144,
        "processor_class": "Phi3VProcessor",
    })
    # The release's remote code, replaced by files that fail loudly: nothing here may ever import them.
    for name in ("configuration_phi3_v.py", "modeling_phi3_v.py", "processing_phi3_v.py",
                 "image_processing_phi3_v.py", "image_embedding_phi3_v.py"):
        (folder / name).write_text(f'raise ImportError("{name}: the hub\'s remote code must never run")\n')
    (folder / "README.md").write_text(f"# {RELEASES[release]['title']} (tiny local stand-in for tests)\n")


# ---------------------------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------------------------


def shard_name(stem: str, k: int, n: int, files: list[bytes]) -> str:
    """`<stem>-0000k-of-0000n-<hash>.parquet`, the hub's parquet shard names (hash of the split's shards)."""
    digest = hashlib.sha1(b"".join(hashlib.sha1(f).digest() for f in files)).hexdigest()[:16]
    return f"{stem}-{k:05d}-of-{n:05d}-{digest}.parquet"


def _resharded(parquet: Path, stem: str, shards: int, scratch: Path) -> dict[str, bytes]:
    """Split one parquet file into `shards` files named like the hub's (rows in order)."""
    table = pq.read_table(parquet)
    bounds = [round(i * table.num_rows / shards) for i in range(shards + 1)]
    blobs = []
    for k in range(shards):
        part = scratch / f"part-{k}.parquet"
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), part)
        blobs.append(part.read_bytes())
        part.unlink()
    return {shard_name(stem, k, shards, blobs): data for k, data in enumerate(blobs)}


def docvqa_files(scratch: Path, seed: int) -> dict[str, bytes]:
    raw = scratch / "docvqa"
    docvqa.synthesize_docvqa(raw, seed, DOCVQA_SIZES)
    files = {"README.md": b"# docvqa_1200_examples (local stand-in)\n"}
    for split, pattern in docvqa.SPLIT_PATTERNS.items():
        (parquet,) = raw.glob(pattern)
        files.update({f"data/{name}": data for name, data in _resharded(parquet, split, 1, scratch).items()})
    return files


def _cauldron_docvqa(raw: Path, seed: int) -> None:
    """The Cauldron's `docvqa` configuration: the mini set's synthetic pages as question/answer turns."""
    pages = raw / "pages"
    docvqa.synthesize_docvqa(pages, seed + 1, {"train": CAULDRON_SIZES["test"] + CAULDRON_SIZES["train"], "test": 1})
    (parquet,) = pages.glob(docvqa.SPLIT_PATTERNS["train"])
    rows = pq.read_table(parquet).to_pylist()
    cauldron.write_cauldron_parquet(
        raw, "docvqa", [[row["image"]] for row in rows],
        [[{"user": row["query"]["en"], "assistant": answer, "source": "DocVQA"} for answer in row["answers"][:2]]
         for row in rows],
    )


def cauldron_files(scratch: Path, seed: int) -> dict[str, bytes]:
    files = {"README.md": b"# the_cauldron (local stand-in: docvqa, hateful_memes, nlvr2)\n"}
    synthesizers = {"docvqa": lambda raw: _cauldron_docvqa(raw, seed),
                    "hateful_memes": lambda raw: cauldron.synthesize_hateful_memes(raw, seed, CAULDRON_SIZES),
                    "nlvr2": lambda raw: cauldron.synthesize_nlvr2(raw, seed, CAULDRON_SIZES)}
    for config, synthesize in synthesizers.items():
        raw = scratch / f"cauldron-{config}"
        synthesize(raw)
        (parquet,) = raw.glob(cauldron.config_pattern(config))
        for name, data in _resharded(parquet, "train", CAULDRON_SHARDS, scratch).items():
            files[f"{config}/{name}"] = data
    return files


def docvqa_val_files(scratch: Path, seed: int) -> dict[str, bytes]:
    """`lmms-lab-encoder/DocVQA`: `DocVQA/validation-0000k-of-0000n.parquet` (the hub names them without a hash)."""
    raw = scratch / "docvqa_val"
    docvqa.synthesize_docvqa_val(raw, seed, {docvqa.VAL_SPLIT: DOCVQA_VAL_SIZE})
    (parquet,) = raw.glob(docvqa.VAL_PATTERN)
    shards = _resharded(parquet, "validation", DOCVQA_VAL_SHARDS, scratch)
    files = {"README.md": b"# DocVQA (local stand-in: config DocVQA, split validation)\n"}
    for name, data in shards.items():
        files[f"{docvqa.VAL_CONFIG}/{name.rsplit('-', 1)[0]}.parquet"] = data
    return files


def ucf101_files(scratch: Path, seed: int) -> dict[str, bytes]:
    raw = scratch / "ucf101"
    ucf101.synthesize_ucf101(raw, seed, UCF101_SIZES)
    return {ucf101.ARCHIVE_NAME: (raw / ucf101.ARCHIVE_NAME).read_bytes(), "README.md": b"# ucf101-subset\n"}


# ---------------------------------------------------------------------------------------------
# The whole cache
# ---------------------------------------------------------------------------------------------


def write_test_hub(hf_home: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write the cache into `hf_home/hub` (all or nothing); return {repo id: commit}. Deterministic in `seed`."""
    hf_home = Path(hf_home)
    with atomic_output_dir(hf_home) as tmp_home, tempfile.TemporaryDirectory() as scratch_dir:
        scratch, hub_dir = Path(scratch_dir), tmp_home / "hub"
        for release in RELEASES:
            write_model_folder(scratch / repo_folder_name(repo_id=release, repo_type="model"), seed, release)
        repos = {
            **{(release, "model"): folder_files(scratch / repo_folder_name(repo_id=release, repo_type="model"))
               for release in RELEASES},
            (docvqa.REPO_ID, "dataset"): docvqa_files(scratch, seed),
            (cauldron.REPO_ID, "dataset"): cauldron_files(scratch, seed),
            (docvqa.VAL_REPO_ID, "dataset"): docvqa_val_files(scratch, seed),
            (ucf101.HUB_REPO_ID, "dataset"): ucf101_files(scratch, seed),
        }
        commits = {repo_id: write_cached_repo(hub_dir, repo_id, files, repo_type=repo_type)
                   for (repo_id, repo_type), files in repos.items()}
        _write_json(tmp_home / "commits.json", commits)
    return commits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-home", required=True, help="folder to write (replaced if it exists); use as HF_HOME")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    commits = write_test_hub(args.hf_home, args.seed)
    for repo_id, commit in commits.items():
        print(f"{repo_id}@{commit}")
    print(f"wrote {args.hf_home} in {time.perf_counter() - start:.1f} s; use: "
          f"HF_HOME={os.path.abspath(args.hf_home)} HF_HUB_OFFLINE=1")


if __name__ == "__main__":
    main()
