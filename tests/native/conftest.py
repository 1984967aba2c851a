"""A tiny model in the release's file set, built once."""

import pytest

from .release import write_release_folder


@pytest.fixture(scope="session")
def release_folder(tmp_path_factory):
    return write_release_folder(tmp_path_factory.mktemp("release"))
