"""Where datasets come from: the hub (real) or the demo's generators (synthetic), in the hub's layouts."""

import importlib

# The module of each task (a dataset's `task` in the config); each holds `<kind>_<task>` functions.
TASK_MODULES = {
    "docvqa": "docvqa",
    "docvqa_full": "docvqa",
    "docvqa_val": "docvqa",  # DocVQA validation in lmms-eval's layout: evaluation only
    "hateful_memes": "cauldron",
    "nlvr2": "cauldron",
    "ucf101": "ucf101",
}


def source_function(kind: str, task: str):
    """`<kind>_<task>` of the task's module (kind: synthesize, download, convert)."""
    module = importlib.import_module(f"{__name__}.{TASK_MODULES[task]}")
    return getattr(module, f"{kind}_{task}")
