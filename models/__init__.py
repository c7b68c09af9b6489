"""Model zoo: build a model from a config's task and model settings.

The model classes are imported on first use (PEP 562), so that the ORT-only deployment path
(exports.predict, exports.session) can import models.errors / models.io without torch."""
from importlib import import_module

_LAZY = {"CVAE": "models.cvae", "Decoder": "models.cvae", "LabelSwap": "models.cvae", "UNet": "models.unet",
         "inference_form": "models.unet"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def build_model(task: str, model_kwargs):
    if task == "segmentation":
        from models.unet import UNet
        return UNet(**model_kwargs)
    if task == "cvae":
        from models.cvae import CVAE
        return CVAE(**model_kwargs)
    raise ValueError(f"unknown task {task!r}")
