"""What a model's inputs and outputs mean, shared by training (harness.data) and the deployment
side (exports/): normalisation constants, the pet mask rule and each dataset's class names.

Kept beside the models so that exports/ reads them without importing harness/.
"""
from __future__ import annotations

from models.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_RULE = "trimap 1 (pet) and 3 (border) -> 1; 2 (background) -> 0"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(i) for i in range(10))
PET_CLASSES = ("background", "pet")


def class_names(dataset: str) -> tuple[str, ...]:
    names = {"pets": PET_CLASSES, "mnist": MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}
    if dataset not in names:
        raise UserError(f"unknown dataset {dataset!r}: expected one of {', '.join(names)}")
    return names[dataset]
