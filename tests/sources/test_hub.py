"""Hub download helpers (against local hub caches, offline)."""

from __future__ import annotations

import hashlib
import json

import pytest
from huggingface_hub import constants
from hub_fixture import use_hub_cache

from phi3v.data.sources import hub
from phi3v.errors import UserError

from .layouts import LocalHub


@pytest.fixture
def local_hub(tmp_path, monkeypatch) -> LocalHub:
    fake = LocalHub(tmp_path / "cache")
    fake.install(monkeypatch)
    return fake


def test_download_snapshot_fetches_matching_files_at_the_resolved_commit(local_hub, tmp_path):
    commit = local_hub.repo("org/set", {"a/train-0.parquet": b"A" * 10, "a/train-1.parquet": b"B" * 7,
                                        "b/train-0.parquet": b"C"}, ref="v1")
    local_hub.repo("org/set", {"a/train-0.parquet": b"newer"})  # main moved on; v1 still names the first commit
    raw = tmp_path / "raw"
    record = hub.download_snapshot("org/set", raw, allow_patterns=["a/train-*.parquet"], revision="v1",
                                   cache_dir=tmp_path / "cache")

    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()) == [
        "SOURCE.json", "a/train-0.parquet", "a/train-1.parquet"]
    assert (raw / "a/train-0.parquet").read_bytes() == b"A" * 10
    source = json.loads((raw / "SOURCE.json").read_text())
    assert source == record
    assert source["commit"] == commit and source["revision"] == "v1" and source["repo_id"] == "org/set"
    assert source["files"]["a/train-1.parquet"] == {"size": 7, "sha256": hashlib.sha256(b"B" * 7).hexdigest()}


def test_download_snapshot_removes_stale_shards_and_rejects_a_size_mismatch(local_hub, tmp_path, monkeypatch):
    local_hub.repo("org/set", {"a/train-0.parquet": b"new"})
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    (raw / "a/train-9.parquet").write_bytes(b"old revision")
    hub.download_snapshot("org/set", raw, allow_patterns=["a/*"], cache_dir=tmp_path / "cache")
    assert not (raw / "a/train-9.parquet").exists()

    # a file whose size differs from the published one is refused, and SOURCE.json is not written
    real_place = hub._place_file
    monkeypatch.setattr(hub, "_place_file", lambda cached, target: (real_place(cached, target),
                                                                  target.unlink(), target.write_bytes(b"truncated!")))
    with pytest.raises(UserError, match=r"train-0.parquet: 10 bytes, but the hub publishes 3 bytes"):
        hub.download_snapshot("org/set", raw, allow_patterns=["a/*"], cache_dir=tmp_path / "cache")
    assert not (raw / "SOURCE.json").exists()


def test_download_snapshot_without_matching_files_names_the_patterns(local_hub, tmp_path):
    local_hub.repo("org/set", {"a/train-0.parquet": b"x"})
    with pytest.raises(UserError, match=r"no file of org/set@.* matches \['Z/\*'\]"):
        hub.download_snapshot("org/set", tmp_path / "raw", allow_patterns=["Z/*"], cache_dir=tmp_path / "cache")


def test_a_repo_or_revision_missing_from_the_offline_cache_is_a_user_error(local_hub, tmp_path):
    local_hub.repo("org/set", {"a.parquet": b"x"})
    with pytest.raises(UserError, match=r"'org/other' at revision 'main' \(HF_HUB_OFFLINE is set"):
        hub.download_snapshot("org/other", tmp_path / "raw", allow_patterns=["*"], cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=r"'org/set' at revision 'v9'"):
        hub.download_snapshot("org/set", tmp_path / "raw", allow_patterns=["*"], revision="v9",
                              cache_dir=tmp_path / "cache")


def test_an_incomplete_cached_snapshot_is_a_user_error(local_hub, tmp_path):
    commit = local_hub.repo("org/set", {"a/0.parquet": b"x", "a/1.parquet": b"y"})
    (tmp_path / "cache/datasets--org--set/snapshots" / commit / "a/1.parquet").unlink()  # an interrupted download
    with pytest.raises(UserError, match=r"IncompleteSnapshotError.*a/1.parquet"):
        hub.download_snapshot("org/set", tmp_path / "raw", allow_patterns=["a/*"], cache_dir=tmp_path / "cache")


def test_an_unreachable_hub_falls_back_to_a_complete_cache(tmp_path, monkeypatch):
    local = LocalHub(tmp_path / "cache")
    commit = local.repo("org/set", {"a.parquet": b"x"})
    use_hub_cache(monkeypatch, hub_dir=tmp_path / "cache", offline=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    record = hub.download_snapshot("org/set", tmp_path / "raw", allow_patterns=["*"], cache_dir=tmp_path / "cache")
    assert record["commit"] == commit


def test_download_file_places_one_file_and_records_the_commit(local_hub, tmp_path):
    commit = local_hub.repo("org/videos", {"archive.tar.gz": b"0123456789", "other.txt": b"x"})
    path = hub.download_file("org/videos", "archive.tar.gz", tmp_path / "raw", revision="main",
                             cache_dir=tmp_path / "cache")
    assert path == tmp_path / "raw" / "archive.tar.gz" and path.read_bytes() == b"0123456789"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["SOURCE.json", "archive.tar.gz"]
    source = hub.read_source_record(tmp_path / "raw")
    assert source["commit"] == commit and list(source["files"]) == ["archive.tar.gz"]
    assert source["files"]["archive.tar.gz"]["sha256"] == hashlib.sha256(b"0123456789").hexdigest()
    with pytest.raises(UserError, match="'missing.bin' is not a file of org/videos"):
        hub.download_file("org/videos", "missing.bin", tmp_path / "raw2", cache_dir=tmp_path / "cache")
