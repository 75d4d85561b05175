from .heads import HEAD_SPECS, TASKS, DeconvHead, build_head
from .heads2 import TASKS2, Head2Spec, official_head2_spec
from .sapiens import ModelConfig, SapiensModel, build_model, official_patch_padding
from .sapiens2 import ARCHS2, Sapiens2Arch, Sapiens2ViT
from .vit import ARCHS, SapiensViT, ViTArch, get_arch

__all__ = ["ARCHS", "ARCHS2", "HEAD_SPECS", "TASKS", "TASKS2", "DeconvHead", "Head2Spec", "ModelConfig",
           "Sapiens2Arch", "Sapiens2ViT", "SapiensModel", "SapiensViT", "ViTArch", "build_head", "build_model",
           "get_arch", "official_head2_spec", "official_patch_padding"]
