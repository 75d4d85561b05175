from .heads import HEAD_SPECS, TASKS, DeconvHead, build_head
from .sapiens import ModelConfig, SapiensModel, build_model, official_patch_padding
from .vit import ARCHS, SapiensViT, ViTArch, get_arch

__all__ = ["ARCHS", "HEAD_SPECS", "TASKS", "DeconvHead", "ModelConfig", "SapiensModel", "SapiensViT", "ViTArch",
           "build_head", "build_model", "get_arch", "official_patch_padding"]
