"""The presets of `segvae run`: named overrides of the registry's recipes (harness/config.py) plus
what the later stages do. Data only, so the parser lists them without importing the pipeline."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from harness.config import ExperimentConfig, get_experiment


@dataclass
class Preset:
    """Overrides applied to the registry's configs, plus what the later stages do."""
    description: str
    segmentation: dict = field(default_factory=dict)   # ExperimentConfig fields for UNets
    cvae: dict = field(default_factory=dict)           # ExperimentConfig fields for CVAEs
    cvae_by_dataset: dict = field(default_factory=dict)  # dataset -> more CVAE fields ("model": model settings)
    unet_channels: int | None = None
    cvae_channels: int | None = None
    seeds: tuple[int, ...] = (0,)
    cvae_seeds: tuple[int, ...] | None = None           # None: the same as seeds (--seeds sets both)
    judge_epochs: dict = field(default_factory=dict)    # dataset -> epochs; absent: the judge recipe's
    export: dict = field(default_factory=lambda: {"quantize": "int8"})  # `segvae export` flags
    bench: dict = field(default_factory=dict)           # `segvae bench` flags (BenchConfig fields)
    minutes_budget: float | None = None                 # fit a slower machine by training the UNets fewer epochs


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        "A quick CPU look (README's first command): the embedded sample, small widths, short runs.",
        segmentation={"epochs": 25, "image_size": 128, "batch_size": 8, "lr": 3e-3},
        cvae={"epochs": 20, "batch_size": 64, "early_stop_patience": None},
        # MNIST on 1,000 digits collapsed at batch 64 / KL weight 8 (the decoder drew class templates, retention
        # 0.00); batch 16 (more steps), KL weight 6, 0.5 free nats per latent dim and a narrower initial
        # likelihood scale escape the template plateau: swap 86.6-91.6% over seeds 0-3, retention 0.53-0.58.
        cvae_by_dataset={"mnist": {"epochs": 30, "batch_size": 16, "kl_weight": 6.0, "lr": 2e-3, "free_bits": 0.5,
                                   "model": {"log_scale_init": -2.0}}},
        unet_channels=16, cvae_channels=32,
        # the fp32 MNIST judge read 94.7% of real digits after 10 epochs (unfit); 20 epochs: 95.7-97.2% over
        # seeds 0-1 in fp32 and bf16. A CIFAR-10 judge cannot be fit on 850 images; 10 epochs keep it cheap.
        judge_epochs={"mnist": 20, "cifar10": 10},
        bench={"batch_sizes": [1, 8], "rounds": 3, "min_queries": 10, "min_duration": 0.3, "warmup": 2,
               "accuracy_samples": 200, "backends": ["torch-eager", "torch-bf16", "ort-fp32", "ort-int8"]},
        # README's first command must stay a quick look on any CPU: where the estimate exceeds this, the
        # UNets train fewer epochs (the CVAEs keep theirs: fewer let the MNIST CVAE collapse to templates)
        minutes_budget=11.0,
    ),
    "cpu": Preset(
        "A thorough CPU run on ../shared/data (a 3-breed Oxford-IIIT Pet subset, 8,000 + 8,000 MNIST and "
        "CIFAR-10 images): the registry's recipes, UNets over 3 seeds (bf16 where the CPU has it), one seed "
        "per CVAE.",
        # "auto": bf16 on a CPU that computes it natively (AVX512-BF16/AMX: a UNet step 1.76x faster), fp32 on
        # one that would emulate it (an AVX2 EPYC: bf16 60-500x slower), so the preset fits either machine
        segmentation={"mixed_precision": "auto"},
        cvae={"early_stop_patience": None},
        judge_epochs={"mnist": 12}, seeds=(0, 1, 2), cvae_seeds=(0,),  # CIFAR-10: the recipe's 30 (fit)
        bench={},  # the bench's defaults: 12 interleaved rounds, single-stream and offline batch 8
    ),
    "gpu": Preset(
        "A GPU run with the seed's settings: 64 base channels, 256 px, more epochs, bf16 (fp16 on a GPU "
        "without bf16).",
        segmentation={"image_size": 256, "epochs": 100, "batch_size": 32, "mixed_precision": "auto"},
        cvae={"epochs": 100, "batch_size": 256, "mixed_precision": "auto"},
        unet_channels=64, cvae_channels=128, seeds=(0, 1, 2),
        export={"quantize": "int8", "fp16": True},
        bench={"batch_sizes": [1, 8, 32, 128], "min_queries": 100, "min_duration": 5.0},
    ),
}


def preset_config(name: str, preset: Preset, seed: int) -> ExperimentConfig:
    """The registry's recipe with the preset's overrides and the seed: what the run trains."""
    cfg = get_experiment(name)
    cfg = apply_overrides(cfg, preset.segmentation if cfg.task == "segmentation" else preset.cvae).replace(seed=seed)
    if cfg.task == "cvae":
        cfg = apply_overrides(cfg, preset.cvae_by_dataset.get(cfg.dataset, {}))
    channels = preset.unet_channels if cfg.task == "segmentation" else preset.cvae_channels
    if channels:
        cfg = cfg.with_base_channels(channels)
    return cfg.validate()


def apply_overrides(cfg: ExperimentConfig, overrides: dict) -> ExperimentConfig:
    """Config fields, plus "model": {...} for the model settings (e.g. log_scale_init)."""
    overrides = dict(overrides)
    model = overrides.pop("model", None)
    cfg = cfg.replace(**overrides)
    return cfg.replace(model=dataclasses.replace(cfg.model, **model)) if model else cfg


def task_seeds(preset: Preset, task: str, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override:
        return tuple(override)
    return tuple(preset.cvae_seeds or preset.seeds) if task == "cvae" else tuple(preset.seeds)
