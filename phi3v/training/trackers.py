"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's tracking API.

A run's `report_to` names the trackers; empty means none. They receive the run config once and,
every optimiser step, the same values as a line of `train_log.jsonl`. Their files go under
`<run folder>/trackers/` (TensorBoard events in `trackers/<project>/`, W&B's local copy in
`trackers/wandb/`, MLflow's artifacts); MLflow's tracking store is wherever `MLFLOW_TRACKING_URI`
points, as MLflow decides.
"""

from __future__ import annotations

from pathlib import Path

from phi3v.errors import UserError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> pip package


def project_name(run) -> str:
    """One tracker project per dataset; runs within it are named by their run id."""
    return f"phi3v-{run.dataset}"


def check_available(report_to) -> None:
    """Refuse a tracker whose package is missing: accelerate would drop it without a word."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    missing = [name for name in report_to if not available[name]()]
    if missing:
        raise UserError(f"report_to: {', '.join(missing)} is not installed — pip install "
                        f"{' '.join(PACKAGES[name] for name in missing)}, or remove it from report_to")


def accelerator_options(run, tracker_dir) -> dict:
    """Keyword arguments of `Accelerator(...)`: no trackers unless the run names some."""
    if not run.report_to:
        return {}
    check_available(run.report_to)
    return {"log_with": list(run.report_to), "project_dir": str(tracker_dir)}


def hyperparameters(run) -> dict:
    """The run config as scalars: TensorBoard's hparams take numbers, strings and booleans only."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in run.to_dict().items()}


def start(accelerator, run, tracker_dir) -> None:
    """`init_trackers` with the run config; a no-op for a run without trackers."""
    if not run.report_to:
        return
    tracker_dir = Path(tracker_dir)
    init_kwargs = {"wandb": {"name": run.run, "dir": str(tracker_dir)},
                   "mlflow": {"run_name": run.run, "logging_dir": str(tracker_dir / "mlflow")}}
    if accelerator.is_main_process:
        tracker_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(project_name(run), config=hyperparameters(run),
                              init_kwargs={name: init_kwargs[name] for name in run.report_to if name in init_kwargs})


def log_step(accelerator, run, entry: dict) -> None:
    """One `train_log.jsonl` line to every tracker, at its optimiser step."""
    if run.report_to:
        accelerator.log({key: value for key, value in entry.items() if key != "step"}, step=entry["step"])
