"""Fine-tune, evaluate and benchmark Phi-3.5-vision: a native model plus a reproducible workflow."""

__version__ = "0.1.0"
