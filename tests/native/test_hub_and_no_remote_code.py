"""The release's file set loads from a hub cache and from a folder without remote code and without any question."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .release import write_hub_cache

REPO_ID = "microsoft/Phi-3.5-vision-instruct"
COMMIT = "4a0d683eba9f1d0cbfb6151705d1ee73c25a80ca"

LOADS = textwrap.dedent("""
    import sys
    import phi3v
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer
    from phi3v.modeling_phi3v import Phi3VForCausalLM
    from phi3v.processing_phi3v import Phi3VProcessor, check_compatible

    repo, commit, snapshot = sys.argv[1:]
    for revision in ("main", commit):
        processor = Phi3VProcessor.from_pretrained(repo, revision=revision)
        model = Phi3VForCausalLM.from_pretrained(repo, revision=revision)
        check_compatible(model, processor, repo)
    # the standard snippet, trust_remote_code left at its default
    processor = AutoProcessor.from_pretrained(snapshot)
    model = AutoModelForCausalLM.from_pretrained(snapshot)
    AutoTokenizer.from_pretrained(snapshot)
    print("loaded", type(processor).__name__, type(model).__name__, processor.image_processor.num_crops)
""")


def test_release_file_set_loads_from_the_hub_cache_without_prompting(release_folder, tmp_path):
    hf_home = tmp_path / "hf_home"
    snapshot = write_hub_cache(hf_home, REPO_ID, release_folder, COMMIT)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", LOADS, REPO_ID, COMMIT, str(snapshot)], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "loaded Phi3VProcessor Phi3VForCausalLM 4" in result.stdout
    for sign in ("custom code", "trust_remote_code", "[y/N]", "remote code"):
        assert sign not in output, output


def test_a_missing_local_folder_is_not_taken_for_a_hub_id(tmp_path):
    import pytest

    from phi3v.errors import UserError
    from phi3v.processing_phi3v import Phi3VProcessor

    with pytest.raises(UserError, match="does not exist"):
        Phi3VProcessor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match="does not exist"):
        Phi3VProcessor.from_pretrained("./relative/nowhere")
