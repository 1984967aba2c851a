"""Fine-tune, evaluate and benchmark Phi-3.5-vision: a native model plus a reproducible workflow.

Importing the package registers model type `phi3_v` with transformers' Auto classes, so `AutoConfig`,
`AutoModelForCausalLM`, `AutoModelForImageTextToText`, `AutoProcessor` and `AutoImageProcessor` load a folder
(or hub id) in the release's layout with the code here, never with the release's remote code.
A process that never loads a model (Snakemake reading the workflow) may set PHI3V_AUTO_CLASSES=0
before the import: the registration imports torch and transformers, about 4 s.
"""

import os

from phi3v import numerics

__version__ = "0.1.0"

# Before any kernel runs: the same CPU numbers on every x86-64 machine (see phi3v/numerics.py).
numerics.pin()


def _register_with_auto_classes() -> None:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    from .configuration_phi3v import Phi3VConfig
    from .modeling_phi3v import Phi3VForCausalLM
    from .image_processing_phi3v import Phi3VImageProcessor
    from .processing_phi3v import Phi3VProcessor

    AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig, exist_ok=True)
    AutoModelForCausalLM.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    AutoModelForImageTextToText.register(Phi3VConfig, Phi3VForCausalLM, exist_ok=True)
    AutoImageProcessor.register(Phi3VConfig, image_processor_classes={"pil": Phi3VImageProcessor}, exist_ok=True)
    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)


if os.environ.get("PHI3V_AUTO_CLASSES", "1") != "0":
    _register_with_auto_classes()
