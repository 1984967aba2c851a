"""Resumable checkpoints: `checkpoint_dir/step-<N>/`, complete or absent, the newest two kept.

A checkpoint is Accelerate's `save_state` folder (model or adapter tensors, optimiser, scheduler,
grad scaler, every process's RNG states; DeepSpeed's own files under ZeRO) plus `fingerprint.json`
(what determines the run's trajectory, see `fingerprint`) and `trainer_state.json` (step, log lines
so far). It is written under a temporary name and renamed when complete, so a process killed
mid-save leaves nothing that looks resumable; an old checkpoint is renamed before it is deleted
(`phi3v.files.remove_dir`), so a kill mid-prune leaves no half-deleted `step-N/` either. Each prune
also removes what a kill left: temporary and half-deleted folders, and any `step-N/` without
`trainer_state.json` (which resuming ignores).

A run resumes only from a checkpoint with its own fingerprint. Checkpoints of another run (another
config, base model, data, code, thread count or numerics mode under the same run name) are moved
aside to `<checkpoint_dir>.stale`, replacing an older set there: a rename is instant even for a full
model's optimiser state, a mistaken change can still be undone by moving them back, and at most one
stale set takes disk space.
The workflow's train script shows `ResumePlan.message` on the console before it starts a run.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from phi3v.files import remove_dir, replace_dir

from .fingerprint import differences

STEP_DIR = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.json"
FINGERPRINT = "fingerprint.json"
TMP_PREFIX = ".tmp-step-"
# What a killed save (its temporary folder) or prune (`remove_dir`'s folder) leaves behind.
LEFTOVER = re.compile(rf"^({re.escape(TMP_PREFIX)}\d+|\.step-\d+\.deleting)$")
STALE_SUFFIX = ".stale"
DAMAGED_SUFFIX = ".damaged"


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
                    fingerprint: dict, keep: int = 2) -> Path:
    """Write `step-<step>/` atomically (tmp name, then rename) and prune to the newest `keep`."""
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / f"step-{step}"
    tmp = checkpoint_dir / f"{TMP_PREFIX}{step}"  # same name on every rank: all write into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1))
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state))  # last: marks the folder complete
        replace_dir(tmp, final)
        prune_checkpoints(checkpoint_dir, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(checkpoint_dir: str | Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete every other `step-N/` (older, or left
    incomplete by a kill) and the temporary and half-deleted folders of killed saves and prunes.

    Call it between saves only (on the main process): a save's own temporary folder is then gone.
    """
    checkpoint_dir = Path(checkpoint_dir)
    kept = {path for _, path in complete_checkpoints(checkpoint_dir)[-keep:]}
    for path in checkpoint_dir.iterdir():
        if STEP_DIR.match(path.name) and path not in kept:
            remove_dir(path)
        elif LEFTOVER.match(path.name):
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(accelerator, folder: Path) -> dict:
    """Restore everything `save_checkpoint` wrote; return its trainer state."""
    from accelerate.utils import DistributedType

    # frozen tensors are not in the checkpoint (DeepSpeed loads its own files, strictly)
    strict = {} if accelerator.distributed_type == DistributedType.DEEPSPEED else {"strict": False}
    accelerator.load_state(str(folder), **strict)
    return json.loads((folder / TRAINER_STATE).read_text())


@dataclass(frozen=True)
class ResumePlan:
    """What a run does with its checkpoint folder: resume from `checkpoint`, or set `stale` aside."""

    checkpoint_dir: Path
    checkpoint: Path | None = None  # the newest complete checkpoint, written by this very run
    stale: list[str] | None = None  # why the checkpoints there belong to another run

    @classmethod
    def of(cls, checkpoint_dir: str | Path, fingerprint: dict) -> "ResumePlan":
        checkpoint_dir = Path(checkpoint_dir)
        newest = latest_checkpoint(checkpoint_dir)
        if newest is None:
            return cls(checkpoint_dir)
        recorded = newest / FINGERPRINT
        if not recorded.is_file():
            return cls(checkpoint_dir, stale=["it records no fingerprint"])
        changes = differences(json.loads(recorded.read_text()), fingerprint)
        return cls(checkpoint_dir, stale=changes) if changes else cls(checkpoint_dir, checkpoint=newest)

    @property
    def stale_dir(self) -> Path:
        return self.checkpoint_dir.with_name(self.checkpoint_dir.name + STALE_SUFFIX)

    @property
    def step(self) -> int:
        return int(STEP_DIR.match(self.checkpoint.name).group(1)) if self.checkpoint else 0

    def message(self, run_name: str) -> str | None:
        """The one console line that says what happens to the checkpoints (None: there are none)."""
        if self.checkpoint:
            return f"run {run_name!r}: resuming from step {self.step} (checkpoint {self.checkpoint})"
        if self.stale:
            shown = "; ".join(self.stale[:3]) + (f"; {len(self.stale) - 3} more" if len(self.stale) > 3 else "")
            return (f"run {run_name!r}: not resuming the checkpoints in {self.checkpoint_dir}, another run "
                    f"wrote them ({shown}); moving them to {self.stale_dir} and training from step 0")
        return None

    def set_stale_aside(self) -> None:
        """Move another run's checkpoints to `stale_dir` (replacing an older set), so none is resumed."""
        if self.stale:
            replace_dir(self.checkpoint_dir, self.stale_dir)


def set_damaged_aside(checkpoint_dir: str | Path, run_name: str) -> None:
    """Move the newest checkpoints while one is damaged (a file cut short or unreadable, see
    `model_files.folder_damage`) to `<checkpoint_dir>.damaged/`, saying so, so the run resumes from the
    newest sound one or from step 0.

    Set aside rather than refused: an unattended rerun or requeue would otherwise fail the same way
    until someone moves the folder by hand, and a rename keeps the files to look at.
    """
    from phi3v.model_files import folder_damage

    checkpoint_dir = Path(checkpoint_dir)
    damaged_dir = checkpoint_dir.with_name(checkpoint_dir.name + DAMAGED_SUFFIX)
    while (newest := latest_checkpoint(checkpoint_dir)) is not None:
        why = folder_damage(newest)
        if why is None:
            return
        damaged_dir.mkdir(parents=True, exist_ok=True)
        target = damaged_dir / newest.name
        replace_dir(newest, target)
        print(f"warning: run {run_name!r}: checkpoint {newest} is damaged ({why}); moved it to {target} "
              "(delete it when done looking) and resuming from the newest sound checkpoint, if any", flush=True)


def resume_point(accelerator, checkpoint_dir: str | Path, fingerprint: dict, run_name: str) -> Path | None:
    """The checkpoint this run resumes from, if it wrote one; damaged ones and another run's are set aside first."""
    if accelerator.is_main_process:
        set_damaged_aside(checkpoint_dir, run_name)
        plan = ResumePlan.of(checkpoint_dir, fingerprint)
        plan.set_stale_aside()
        if plan.message(run_name):
            print(plan.message(run_name), flush=True)
    accelerator.wait_for_everyone()
    return latest_checkpoint(checkpoint_dir)
