"""A damaged checkpoint (a file cut short by a full disk or a half copy) is set aside with a warning, and the run
resumes from the newest sound checkpoint to the result an undisturbed run gives."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from phi3v.training.checkpoint import complete_checkpoints, set_damaged_aside
from phi3v.training.train import train

from .conftest import DATASET, base_run


def run_train(run, base, data, out, ckpt) -> dict:
    return train(run, base_model=base, data_dir=data, dataset_name=DATASET, out_dir=out, checkpoint_dir=ckpt,
                 progress=False)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        tiny_base, tiny_data, tmp_path, capsys):
    run = base_run(max_steps=6, checkpoint_every=2)
    first = run_train(run, tiny_base, tiny_data, tmp_path / "first", tmp_path / "ckpt")
    assert [step for step, _ in complete_checkpoints(tmp_path / "ckpt")] == [2, 4]
    weights = tmp_path / "ckpt" / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # cut short
    capsys.readouterr()

    again = run_train(run, tiny_base, tiny_data, tmp_path / "again", tmp_path / "ckpt")
    out = capsys.readouterr().out
    damaged = tmp_path / "ckpt.damaged" / "step-4"
    assert (f"warning: run {run.run!r}: checkpoint {tmp_path / 'ckpt' / 'step-4'} is damaged (model.safetensors: "
            "Error while deserializing header: ") in out
    assert f"moved it to {damaged} (delete it when done looking)" in out
    assert f"resuming from step 2 (checkpoint {tmp_path / 'ckpt' / 'step-2'})" in out
    assert (damaged / "model.safetensors").is_file()
    assert again["final_loss"] == first["final_loss"]
    a, b = load_file(str(tmp_path / "first" / "model" / "model.safetensors")), load_file(str(tmp_path / "again" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("file, damage", [
    ("trainer_state.json", b"{\"step\": 4, \"lo"),
    ("optimizer.bin", b"PK\x03\x04 cut"),
    ("random_states_0.pkl", b""),
])
def test_each_file_a_checkpoint_holds_is_checked(tmp_path, file, damage, capsys):
    for step in (2, 4):
        folder = tmp_path / "ckpt" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"step": step, "log": []}))
    (tmp_path / "ckpt" / "step-4" / file).write_bytes(damage)
    set_damaged_aside(tmp_path / "ckpt", "r")
    assert [step for step, _ in complete_checkpoints(tmp_path / "ckpt")] == [2]
    assert f"checkpoint {tmp_path / 'ckpt' / 'step-4'} is damaged ({file}: " in capsys.readouterr().out
    assert (tmp_path / "ckpt.damaged" / "step-4" / file).is_file()
