"""Resumable checkpoints: `checkpoint_dir/step-<N>/`, complete or absent, the newest two kept.

A checkpoint is Accelerate's `save_state` folder (model or adapter tensors, optimiser, scheduler,
grad scaler, every process's RNG states; DeepSpeed's own files under ZeRO) plus `trainer_state.json`
(step, log lines so far). It is written under a temporary name and renamed when complete, so a
process killed mid-save leaves nothing that looks resumable.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

STEP_DIR = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def complete_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    found = complete_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def keep_only_trainable_tensors(accelerator) -> None:
    """Save and load only trainable tensors: frozen ones (and 4-bit bases) come from the base model.

    Applies to plain/DDP models; DeepSpeed saves its own partitioned state.
    """

    def drop_frozen(models, weights, output_dir):
        for model, state in zip(models, weights):
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in [k for k in state if k not in trainable]:
                del state[key]

    accelerator.register_save_state_pre_hook(drop_frozen)


def save_checkpoint(accelerator, checkpoint_dir: str | Path, step: int, trainer_state: dict,
                    keep: int = 2) -> Path:
    """Write `step-<step>/` atomically (tmp name, then rename) and prune to the newest `keep`."""
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / f"step-{step}"
    tmp = checkpoint_dir / f".tmp-step-{step}"  # same name on every rank: all write into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in complete_checkpoints(checkpoint_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: Path) -> dict:
    """Restore everything `save_checkpoint` wrote; return its trainer state."""
    from accelerate.utils import DistributedType

    # frozen tensors are not in the checkpoint (DeepSpeed loads its own files, strictly)
    strict = {} if accelerator.distributed_type == DistributedType.DEEPSPEED else {"strict": False}
    accelerator.load_state(str(folder), **strict)
    return json.loads((folder / TRAINER_STATE).read_text())
