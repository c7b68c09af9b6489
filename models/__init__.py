"""Model zoo: build a model from a config's task and model kwargs.

The model classes are imported on first use (PEP 562), so that `models.errors` can be imported
without torch by the ORT-only deployment path (exports.session, harness.predict)."""
from importlib import import_module

_LAZY = {"CVAE": "models.cvae", "Decoder": "models.cvae", "LabelSwap": "models.cvae", "UNet": "models.unet",
         "inference_form": "models.unet"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def build_model(task: str, model_kwargs: dict):
    if task == "segmentation":
        from models.unet import UNet
        return UNet(**model_kwargs)
    if task == "cvae":
        from models.cvae import CVAE
        return CVAE(**model_kwargs)
    raise ValueError(f"unknown task {task!r}")


__all__ = ["UNet", "CVAE", "LabelSwap", "Decoder", "build_model", "inference_form"]
