"""OpenSapiens: Meta's Sapiens human-centric vision models in pure PyTorch."""

from .checkpoints import convert_checkpoint, load_model, save_model
from .inference.predictors import load, load_predictor
from .inference.tracking import PoseTracker
from .models import build_model

__version__ = "0.1.0"

__all__ = ["PoseTracker", "build_model", "convert_checkpoint", "load", "load_model", "load_predictor", "save_model"]
