"""Training hyperparameters: moved to yolo/hyp.py (the detector's loss and augmentation read them, and prune/
needs them without importing finetune/). These names stay importable from here for existing callers."""

from yolo.hyp import DEFAULT_HYP_PATH, HYP_BOUNDS, HypError, dump_hyp, load_hyp

__all__ = ["DEFAULT_HYP_PATH", "HYP_BOUNDS", "HypError", "dump_hyp", "load_hyp"]
