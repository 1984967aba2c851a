"""Raw folders from the Hugging Face Hub: download a dataset's or a model's files, record where they came from.

A *raw folder* mirrors a hub dataset repository (same relative paths, same parquet columns), whether
it was downloaded (`download_snapshot`, `download_file`) or generated for the demo. `SOURCE.json`
at its root says where the files came from: the repository and the resolved commit, or the generator.
The converters read raw folders with `phi3v.data.sources.raw_folder` and write recipe records with
`phi3v.data.sources.split_writer`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.utils import filter_repo_objects

from phi3v.errors import UserError

SOURCE_FILE = "SOURCE.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_TREE_LISTING = tuple(
    getattr(huggingface_hub.errors, name)
    for name in ("CachedRepoTreeNotFoundError",)
    if hasattr(huggingface_hub.errors, name)
)


class NoMatchingFiles(UserError):
    """No file of the repository matches the requested patterns."""


# Errors the hub client raises for a wrong repo id/revision or an unreachable hub (the names that
# exist depend on the huggingface_hub version; its transport errors are OSError in older ones).
_HUB_ERRORS = tuple(
    getattr(huggingface_hub.errors, name)
    for name in ("HfHubHTTPError", "HTTPError", "HFValidationError", "XetDownloadError")
    if hasattr(huggingface_hub.errors, name)
) + (OSError,)


def write_source_record(raw_dir: str | os.PathLike, record: dict) -> Path:
    """Write `raw_dir/SOURCE.json` (sorted keys, so identical sources give identical files)."""
    path = Path(raw_dir) / SOURCE_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_source_record(raw_dir: str | os.PathLike) -> dict | None:
    """The raw folder's `SOURCE.json`, or None when it has none."""
    path = Path(raw_dir) / SOURCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _hub_failure(repo_id: str, revision: str | None, error: Exception) -> UserError:
    offline = " (HF_HUB_OFFLINE is set: only what the hub cache already holds can be used)" if constants.HF_HUB_OFFLINE else ""
    return UserError(
        f"could not fetch the hub repository '{repo_id}' at revision '{revision or 'main'}'{offline}: "
        f"{type(error).__name__}: {error}. Check the repository name and revision, the network, "
        "and HF_TOKEN for gated repositories; rerunning resumes the download."
    )


def _published_files(repo_id: str, repo_type: str, commit: str, cache_dir, snapshot: Path) -> dict[str, dict]:
    """{path: {size, sha256}} of every file of the repo at `commit`, as the hub publishes them.

    Read without network from the tree listing huggingface_hub caches with each snapshot download (so an
    offline machine that downloaded once works); the sha256 of an LFS file is the name of its cached blob
    (the hub's etag). huggingface_hub versions without that listing ask the hub API.
    """
    cached_tree = getattr(huggingface_hub, "get_cached_repo_tree", None)
    try:
        if cached_tree is None:
            raise LookupError("this huggingface_hub keeps no tree listing")
        tree = cached_tree(repo_id, repo_type=repo_type, revision=commit, cache_dir=cache_dir)
    except (LookupError,) + _NO_TREE_LISTING:
        try:
            info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=commit, files_metadata=True)
        except _HUB_ERRORS as error:
            raise _hub_failure(repo_id, commit, error) from error
        return {s.rfilename: _published_record(s) for s in info.siblings or []}
    files = {}
    for entry in tree:
        blob = Path(os.path.realpath(snapshot / entry.path)).name
        files[entry.path] = {"size": entry.size, "sha256": blob if _SHA256.fullmatch(blob) else None}
    return files


def _published_record(sibling) -> dict:
    lfs = getattr(sibling, "lfs", None)
    size = sibling.size if sibling.size is not None else (lfs.size if lfs else None)
    return {"size": size, "sha256": lfs.sha256 if lfs else None}


def _place_file(cached: Path, target: Path) -> None:
    """Hard-link a cached file into the raw folder (copy across file systems): no second copy on disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    blob = Path(os.path.realpath(cached))
    try:
        os.link(blob, target)
    except OSError:
        shutil.copy2(blob, target)


def _check_sizes(raw_dir: Path, files: dict[str, dict], repo_id: str, commit: str) -> None:
    for name, published in files.items():
        local = raw_dir / name
        if published["size"] is not None and local.stat().st_size != published["size"]:
            raise UserError(
                f"{local}: {local.stat().st_size} bytes, but the hub publishes {published['size']} bytes "
                f"for {repo_id}@{commit}/{name}. Delete the file (and the hub cache entry) and rerun."
            )


def download_snapshot(
    repo_id: str,
    raw_dir: str | os.PathLike,
    *,
    allow_patterns: list[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    repo_type: str = "dataset",
) -> dict:
    """Download the files of `repo_id` matching `allow_patterns` into `raw_dir`, in the repo's layout.

    `snapshot_download` resolves the revision to one commit (from the hub, or offline from the cache's
    refs) and fetches every file at that commit, so one raw folder never mixes two versions. Files go
    through the hub cache (`cache_dir`, default `$HF_HOME/hub`), which resumes interrupted downloads, and
    are hard-linked into `raw_dir`. Returns the record written to `raw_dir/SOURCE.json` (repo, requested
    revision, commit, patterns, published size/sha256 per file).
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    # A folder without SOURCE.json is incomplete: remove it first so an interrupted update is visible.
    (raw_dir / SOURCE_FILE).unlink(missing_ok=True)
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=allow_patterns,
                cache_dir=cache_dir,
            )
        )
    except _HUB_ERRORS as error:
        raise _hub_failure(repo_id, revision, error) from error
    commit = snapshot.name  # the cache names each snapshot folder after its commit
    published = _published_files(repo_id, repo_type, commit, cache_dir, snapshot)
    wanted = sorted(filter_repo_objects(published, allow_patterns=allow_patterns))
    if not wanted:
        raise NoMatchingFiles(
            f"no file of {repo_id}@{commit} matches {allow_patterns}; check the dataset name and "
            "configuration (they are case-sensitive)."
        )

    # Files of an older revision that the patterns cover would be read by the converters: drop them.
    for stale in sorted(filter_repo_objects(_relative_files(raw_dir), allow_patterns=allow_patterns)):
        if stale not in wanted:
            (raw_dir / stale).unlink()
    for name in wanted:
        cached = snapshot / name
        if not cached.exists():
            raise UserError(
                f"the hub download of {repo_id}@{commit} lacks '{name}'; rerun to resume the download."
            )
        _place_file(cached, raw_dir / name)

    files = {name: published[name] for name in wanted}
    _check_sizes(raw_dir, files, repo_id, commit)
    record = {
        "repo_id": repo_id,
        "repo_type": repo_type,
        "revision": revision,
        "commit": commit,
        "allow_patterns": list(allow_patterns),
        "files": files,
    }
    write_source_record(raw_dir, record)
    return record


def download_file(
    repo_id: str,
    filename: str,
    raw_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    repo_type: str = "dataset",
) -> Path:
    """Download one file of `repo_id` into `raw_dir/filename` (`download_snapshot` of that one file).

    Returns the local path; `raw_dir/SOURCE.json` records the repo, requested revision and commit.
    """
    # The name as a pattern that matches only itself (fnmatch's wildcards escaped).
    pattern = re.sub(r"([*?\[])", r"[\1]", filename)
    try:
        download_snapshot(repo_id, raw_dir, allow_patterns=[pattern], revision=revision, cache_dir=cache_dir,
                          repo_type=repo_type)
    except NoMatchingFiles:
        raise UserError(
            f"'{filename}' is not a file of {repo_id} at revision '{revision or 'main'}'; check the file name "
            "(case-sensitive)."
        ) from None
    return Path(raw_dir) / filename


# Everything a model folder needs; the hub's remote-code .py files are not (the model is native).
MODEL_CONFIG_FILES = ["*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"]
MODEL_WEIGHT_FILES = ["*.safetensors"]


def download_model(
    repo_id: str,
    out_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights: bool = True,
) -> dict:
    """The hub's model folder (configs, tokenizer, processor config; weights unless `weights=False`) in
    `out_dir`, plus the provenance file that runs started from it record. Returns the SOURCE.json record."""
    from phi3v.provenance import MODEL_SOURCE_FILE

    patterns = MODEL_CONFIG_FILES + (MODEL_WEIGHT_FILES if weights else [])
    record = download_snapshot(repo_id, out_dir, allow_patterns=patterns, revision=revision, cache_dir=cache_dir,
                               repo_type="model")
    provenance = {"model": {"id": repo_id, "revision": record["commit"]}}
    (Path(out_dir) / MODEL_SOURCE_FILE).write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    return record


def _relative_files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
