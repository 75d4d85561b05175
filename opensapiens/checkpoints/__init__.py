from .hub import HubFile, official_names, parse_name, resolve_checkpoint
from .loading import (
    as_dtype,
    convert_checkpoint,
    export_official,
    is_multitask,
    load_model,
    load_multitask,
    load_state,
    save_model,
    with_weights,
)
from .official import infer_config, official_to_ours, ours_to_official
from .onnx_export import check_onnx, export_onnx
from .reader import CheckpointError, read_state_dict
from .transformers_export import export_transformers

__all__ = ["CheckpointError", "HubFile", "as_dtype", "check_onnx", "convert_checkpoint", "export_official",
           "export_onnx", "export_transformers", "infer_config",
           "is_multitask", "load_model", "load_multitask", "load_state", "official_names", "official_to_ours",
           "ours_to_official", "parse_name", "read_state_dict", "resolve_checkpoint", "save_model",
           "with_weights"]
