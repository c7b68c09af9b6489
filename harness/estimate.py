"""How long a `segvae run` plan will take on THIS machine, from a few seconds of calibration.

Why: the same quick preset took 7.3 minutes on a Xeon with AMX and 46 on a 2-core AVX2-only EPYC;
a table measured on one CPU is wrong on the next. So each distinct model of the plan is timed
here for a few optimizer steps (its batch size, its precision, this machine's threads) and a few
forward passes, and every stage is costed from those and the plan's own counts:

  train   epochs x steps/epoch x step + (val per epoch, test once) x forward + process start
  judges  the judge network, timed the same way, over its recipe's epochs and data
  export  a dynamo export per graph, int8 calibration, and three test-split passes (parity, gates)
  bench   the probe, worker starts, one accuracy pass per backend, and rounds x scenarios x
          max(min duration, min queries x latency) per backend, the rounds fitted into the bench's
          time budget as the bench fits them (rounds_in_budget)

The constants below (process start, export tracing, worker start) were fitted on the quick preset
on an AVX2-only EPYC (docs/results/estimate/); data loading and Python overhead are not timed.
A finished run or a current judge costs nothing (segvae run reuses it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from harness.bench.stats import MIN_ROUNDS_95, rounds_in_budget

PROCESS_S = 6.0          # a `segvae` child: interpreter, torch + accelerate imports, data load
EXPORT_TRACE_S = 10.0    # one dynamo export + onnx save + ORT session builds, per run
WORKER_START_S = 4.0     # one bench worker process per backend and run: imports and session build
COMPILE_S = 40.0         # torch-compile's cold + warm compiles per batch size, when benched
STEPS = 2                # timed optimizer steps per model, after one warm-up


@dataclass
class Cost:
    """Seconds one model takes here: an optimizer step at its batch size, a forward pass per sample
    at that batch size and at batch 1."""
    step_s: float
    forward_per_sample_s: float
    forward_bs1_s: float


@dataclass
class Estimate:
    stages: dict = field(default_factory=dict)      # stage -> seconds
    per_task: dict = field(default_factory=dict)    # task -> training seconds (segmentation, cvae)
    calibration_s: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in self.stages.items())
        return (f"  estimate: about {self.total_s / 60:.0f} min here ({parts}; from {self.calibration_s:.0f} s of "
                f"calibration on this machine: each model's step and forward pass timed, stages costed from the "
                f"plan's counts)")


def _time(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def calibrate(model: torch.nn.Module, make_batch, loss_of, batch_size: int, bf16: bool) -> Cost:
    """Time STEPS AdamW steps and forward passes of `model` on random inputs shaped as its data."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    batch = make_batch(batch_size)
    one = make_batch(1)

    def step():
        with autocast:
            loss = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward(b):
        def run():
            with torch.no_grad(), autocast:
                loss_of(model, b)
        return run

    model.train()
    step_s = _time(step, STEPS)
    model.eval()
    return Cost(step_s, _time(forward(batch), STEPS) / batch_size, _time(forward(one), STEPS))


def _run_cost(cfg) -> Cost:
    from harness.train import resolve_precision, train_loss
    from models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.task, cfg.model)
    bf16 = resolve_precision(cfg.mixed_precision) == "bf16"  # as training will run it, emulated or not
    if cfg.task == "segmentation":
        c = int(cfg.model.get("in_channels", 3))

        def make(b):
            return (torch.randn(b, c, cfg.image_size, cfg.image_size), (torch.rand(b, 1, cfg.image_size, cfg.image_size) > 0.5).float())
    else:
        c, s, k = (int(cfg.model.get(key, d)) for key, d in (("in_channels", 1), ("image_size", 28), ("num_classes", 10)))

        def make(b):
            return (torch.rand(b, c, s, s), torch.randint(0, k, (b,)))
    return calibrate(model, make, lambda m, b: train_loss(cfg, m, b), cfg.batch_size, bf16)


def _judge_cost(dataset: str, bs: int) -> Cost:
    import torch.nn.functional as F

    from harness.judge import RECIPES, JudgeNet, resolve_judge_precision

    arch = RECIPES[dataset]["arch"]
    size = 28 if arch["in_channels"] == 1 else 32

    def make(b):
        return (torch.rand(b, arch["in_channels"], size, size).contiguous(memory_format=torch.channels_last),
                torch.randint(0, arch["num_classes"], (b,)))
    model = JudgeNet(**arch).to(memory_format=torch.channels_last)
    return calibrate(model, make, lambda m, b: F.cross_entropy(m(b[0]).float(), b[1]), bs,
                     resolve_judge_precision() == "bf16")


def estimate(runs, judges, data_root, export: dict, bench: dict, costs: dict | None = None) -> Estimate:
    """Seconds per stage on this machine. runs: (ExperimentConfig, benched (the first seed: exported
    and benched), to_train) per run; judges: (dataset, epochs) per judge to train; export and bench:
    the preset's `segvae export` / `segvae bench` settings; costs: a cache of calibrations to reuse
    (filled here), so a second estimate of a changed plan times nothing again."""
    from harness.config import get_experiment
    from harness.data import split_sizes
    from harness.judge import RECIPES

    t0 = time.perf_counter()
    est = Estimate()
    costs = {} if costs is None else costs
    benched = []
    train_s = 0.0
    for cfg, is_benched, to_train in runs:
        sizes = split_sizes(cfg, data_root)
        key = cfg.replace(seed=0).hash()
        if is_benched:
            benched.append((cfg, sizes, key))
        if not to_train:
            continue
        c = _cost_of(cfg, costs, key)
        steps = cfg.epochs * (sizes["train"] // cfg.batch_size if sizes["train"] > cfg.batch_size else 1)
        run_s = (PROCESS_S + steps * c.step_s + (cfg.epochs * sizes["val"] + 2 * sizes["test"]) * c.forward_per_sample_s)
        est.per_task[cfg.task] = est.per_task.get(cfg.task, 0.0) + run_s
        train_s += run_s
    est.stages["train"] = train_s

    judges_s = 0.0
    for ds, epochs in judges:
        sizes = split_sizes(get_experiment(f"cvae-{ds}"), data_root)
        bs = RECIPES[ds]["batch_size"]
        c = costs.get(f"judge-{ds}") or costs.setdefault(f"judge-{ds}", _judge_cost(ds, bs))
        judges_s += (PROCESS_S + (epochs or RECIPES[ds]["epochs"]) * math.ceil(sizes["train"] / bs) * c.step_s
                     + (2 * (epochs or RECIPES[ds]["epochs"]) * sizes["val"] + 5 * sizes["test"]) * c.forward_per_sample_s)
    est.stages["judges"] = judges_s

    calib = int(export.get("calib_count", 128))
    est.stages["export"] = sum(PROCESS_S + EXPORT_TRACE_S
                               + (3 * sizes["test"] + calib) * _cost_of(cfg, costs, key).forward_per_sample_s
                               for cfg, sizes, key in benched)
    est.stages["bench"] = _bench_s(bench, benched, costs)
    est.calibration_s = time.perf_counter() - t0
    return est


def _cost_of(cfg, costs: dict, key: str) -> Cost:
    if key not in costs:
        costs[key] = _run_cost(cfg)
    return costs[key]


def _bench_s(bench: dict, benched: list, costs: dict) -> float:
    from harness.bench.config import BenchConfig
    from harness.bench.runner import default_backends
    from harness.hardware import machine

    fields = {k: v for k, v in bench.items() if k in BenchConfig.__dataclass_fields__}
    cfg = BenchConfig(**fields)
    # as `segvae bench` reads its flags: --budget-min sets the time budget, --rounds alone turns it off
    budget_s = 60.0 * bench["budget_min"] if bench.get("budget_min") else (
        None if "rounds" in bench else cfg.budget_s)
    backends = cfg.backends if cfg.backends is not None else default_backends(machine(with_gpu=False))[0]
    backends = [b for b in backends if not b.startswith("ort-cuda") and b != "ort-tensorrt" and b != "torch-fp16"]
    total = cfg.peak_budget_s
    for cfg_run, sizes, key in benched:
        c = _cost_of(cfg_run, costs, key)
        n_acc = min(cfg.accuracy_samples or sizes["test"], sizes["test"])
        per_round = 0.0
        for scenario in cfg.scenarios:
            for bs in ([1] if scenario != "offline" else cfg.batch_sizes):
                t = cfg.timing(scenario, bs)
                query_s = c.forward_bs1_s if bs == 1 else bs * c.forward_per_sample_s
                per_round += cfg.warmup * query_s + max(t["min_duration"], t["min_queries"] * query_s)
        load_s = len(backends) * (WORKER_START_S + n_acc * c.forward_per_sample_s)
        if "torch-compile" in backends:
            load_s += COMPILE_S * len(cfg.batch_sizes)
        round_s = len(backends) * per_round  # a round runs every backend once
        total += PROCESS_S + load_s + rounds_in_budget(cfg.rounds, budget_s and budget_s / len(benched),
                                                       load_s, round_s, MIN_ROUNDS_95) * round_s
    return total

