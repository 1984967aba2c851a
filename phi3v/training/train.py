"""Fine-tune Phi-3.5-vision: every strategy, checkpoints, automatic resume, torchrun.

    torchrun --nproc_per_node=N -m phi3v.training.train --run-json RUN --base-model DIR --data-dir DIR \\
        --dataset NAME --out-dir DIR --checkpoint-dir DIR

One run from start to finish: the loop (`loop.fit`), then the run folder: the model (LoRA: the
adapter and the model merged from it), `train_log.jsonl`, `provenance.json`, `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phi3v.errors import entry_point
from phi3v.files import atomic_output_dir, write_json_atomic, write_text_atomic
from phi3v.layout import ADAPTER, METRICS_FILE, MODEL, PROVENANCE, TRACKERS_DIR, TRAIN_LOG
from .loop import fit
from .lora_adapter import export_merged_lora, save_adapter
from .run_config import RunConfig, read_run_json


def train(run: RunConfig, *, base_model, data_dir, dataset_name: str, out_dir, checkpoint_dir,
          progress: bool = True) -> dict:
    """Train one run; resume from the newest checkpoint if any; write model/adapter, logs, metrics."""
    result = fit(run, base_model=base_model, data_dir=data_dir, dataset_name=dataset_name,
                 checkpoint_dir=checkpoint_dir, tracker_dir=Path(out_dir) / TRACKERS_DIR, progress=progress)
    accelerator = result.accelerator
    model = accelerator.unwrap_model(result.model)
    # The process group ends before the main process writes (a LoRA merge of the full model takes
    # minutes): no process waits in a barrier that could time out; the launcher waits for all.
    accelerator.end_training()
    if accelerator.is_main_process:
        write_outputs(model, run, base_model=Path(base_model), data_dir=Path(data_dir), out_dir=Path(out_dir),
                      log=result.log, metrics=result.metrics)
    return result.metrics


# ---- outputs -----------------------------------------------------------------------------------

def save_processor(base_model: Path, run: RunConfig, folder: Path) -> None:
    """The processor this run trained with (its num_crops), so the exported folder loads as trained."""
    from phi3v.processing_phi3v import Phi3VProcessor

    Phi3VProcessor.from_pretrained(base_model, num_crops=run.num_crops).save_pretrained(folder)


def write_outputs(model, run: RunConfig, *, base_model: Path, data_dir: Path, out_dir: Path,
                  log: list, metrics: dict) -> None:
    from phi3v import provenance

    out_dir.mkdir(parents=True, exist_ok=True)
    if run.strategy.is_lora:
        with atomic_output_dir(out_dir / ADAPTER) as adapter_dir:
            save_adapter(model, adapter_dir)
        with atomic_output_dir(out_dir / MODEL) as model_dir:
            export_merged_lora(base_model, out_dir / ADAPTER, model_dir)
            save_processor(base_model, run, model_dir)
    else:
        with atomic_output_dir(out_dir / MODEL) as model_dir:
            model.save_pretrained(model_dir)
            save_processor(base_model, run, model_dir)
    write_text_atomic(out_dir / TRAIN_LOG, "".join(json.dumps(entry) + "\n" for entry in log))
    write_json_atomic(out_dir / PROVENANCE, provenance.collect(
        run.to_dict(), model_dir=base_model, data_dir=data_dir,
        extra={"precision": {k: metrics[k] for k in ("weights_dtype", "frozen_weights_dtype",
                                                     "autocast_dtype", "deepspeed")}}))
    write_json_atomic(out_dir / METRICS_FILE, metrics)


# ---- command line ------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m phi3v.training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--run-json", required=True, help="resolved run config: JSON text or a .json file")
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--checkpoint-dir", required=True)
    return parser.parse_args(argv)


@entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    train(read_run_json(args.run_json), base_model=args.base_model, data_dir=args.data_dir,
          dataset_name=args.dataset, out_dir=args.out_dir, checkpoint_dir=args.checkpoint_dir)


if __name__ == "__main__":
    sys.exit(main())
