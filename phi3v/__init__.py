"""Fine-tune, evaluate and benchmark Phi-3.5-vision: a native model plus a reproducible workflow."""

from phi3v import numerics

__version__ = "0.1.0"

# Before any kernel runs: the same CPU numbers on every x86-64 machine (see phi3v/numerics.py).
numerics.pin()
