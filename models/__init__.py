"""Model zoo: build a model from a config's task and model kwargs.

The torch modules load on first use (PEP 562), so the ORT-only deployment path
(exports.predict, exports.session) can import models.errors / models.io without torch.
"""
_LAZY = {"CVAE": "models.cvae", "Decoder": "models.cvae", "LabelSwap": "models.cvae",
         "UNet": "models.unet", "inference_form": "models.unet"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    from models import cvae, unet

    return getattr(cvae if _LAZY[name] == "models.cvae" else unet, name)


def build_model(task: str, model_kwargs):
    from models.cvae import CVAE
    from models.unet import UNet

    if task == "segmentation":
        return UNet(**model_kwargs)
    if task == "cvae":
        return CVAE(**model_kwargs)
    raise ValueError(f"unknown task {task!r}")


__all__ = ["UNet", "CVAE", "LabelSwap", "Decoder", "build_model", "inference_form"]
