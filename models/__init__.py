"""Model zoo: build a model from a config's task and model kwargs."""
from models.cvae import CVAE, Decoder, LabelSwap
from models.unet import UNet, inference_form


def build_model(task: str, model_kwargs: dict):
    if task == "segmentation":
        return UNet(**model_kwargs)
    if task == "cvae":
        return CVAE(**model_kwargs)
    raise ValueError(f"unknown task {task!r}")


__all__ = ["UNet", "CVAE", "LabelSwap", "Decoder", "build_model", "inference_form"]
