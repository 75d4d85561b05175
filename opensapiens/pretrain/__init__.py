"""MAE pretraining of the Sapiens backbone on your own images (``opensapiens pretrain``)."""

from .config import PretrainConfig
from .loop import lr_factor, pretrain

__all__ = ["PretrainConfig", "lr_factor", "pretrain"]
