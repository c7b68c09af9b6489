"""`harness.bench`: schema, latency/throughput sanity, accuracy equal to a direct computation,
FLOPs/peak arithmetic, isolation, skips, torch.compile, and the 2-process accelerate path."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.bench import BenchConfig, run_bench
from harness.bench import scenarios as sc
from harness.bench.backends import INDUCTOR_CACHE, REGISTRY, TorchCompile, TorchEager, files_size
from harness.bench.runner import ENV_FIELDS, RECORD_FIELDS, SERVER_FIELDS
from harness.run_folder import WEIGHTS_FILE, load_run, save_config, save_weights
from harness.config import get_experiment
from harness.errors import UserError
from models import LabelSwap, build_model

# one thread: OpenMP barriers with 2 threads on 2 busy cores (other tests running) make torch ~100x slower
FAST = dict(min_duration=0.05, min_queries=3, batch_sizes=[1, 2], warmup=1, peak_size=256, peak_reps=2, threads=1)
BACKENDS = ["torch-eager", "torch-channels-last", "torch-bf16", "ort-fp32", "ort-int8", "ort-cuda"]
CUDA = REGISTRY["ort-cuda"].available()[0]
MEASURED = [b for b in BACKENDS if b != "ort-cuda" or CUDA]  # ort-cuda is skipped (with its reason) without CUDA


def judge(images: np.ndarray, new_labels: np.ndarray) -> float:
    """A stand-in judge: deterministic in its inputs, so the hook's value can be recomputed."""
    return float(images.astype(np.float64).mean() + (new_labels >= 0).mean())


def _make_run(run_dir: Path, cfg, data_root) -> Path:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.task, cfg.model).eval()
    if cfg.task == "segmentation":  # centre the head so roughly half the pixels are "pet": Dice is not 0
        from harness.data import build_splits
        x = torch.stack([build_splits(cfg, data_root)["test"][i][0] for i in range(2)])
        with torch.no_grad():
            model.head.bias -= model(x).median()
    save_config(run_dir, cfg)
    save_weights(run_dir, model)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("bench-runs")
    unet = _make_run(root / "tiny-unet", get_experiment("unet-mp-tr-bce").with_base_channels(4).replace(image_size=32),
                     data_root)
    cvae = _make_run(root / "tiny-cvae", get_experiment("cvae-mnist").with_base_channels(4), data_root)
    # the UNet is exported here; the CVAE has no onnx/ folder, so run_bench must export it itself
    from harness.export_stage import export_run
    export_run(unet, quantize="int8", data_root=data_root, calib_count=8)
    return {"unet": unet, "cvae": cvae}


@pytest.fixture(scope="module")
def bench(runs, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out") / "bench.json"
    cfg = BenchConfig(backends=BACKENDS, scenarios=["single-stream", "offline", "server"], **FAST)
    doc = run_bench([runs["unet"], runs["cvae"]], cfg, data_root=data_root, out=out,
                    argv=["segvae", "bench", "tiny-unet", "tiny-cvae"], judge_fn=judge)
    return doc, out


def _recs(doc, **match):
    return [r for r in doc["results"] if all(r[k] == v for k, v in match.items())]


@contextlib.contextmanager
def _threads(n: int):
    """The bench's thread count, so a direct recomputation runs the same kernels."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _padded_batches(n: int, b: int):
    for lo in range(0, n, b):
        idx = np.arange(lo, min(lo + b, n))
        yield idx, np.concatenate([idx, np.full(b - len(idx), idx[0])])


# ---------------------------------------------------------------------------- schema
def test_schema(bench):
    doc, out = bench
    assert json.loads(Path(out).read_text()) == json.loads(json.dumps(doc))
    assert doc["version"] == 1 and isinstance(doc["version"], int)
    assert set(ENV_FIELDS) <= set(doc["env"])
    assert doc["env"]["command"] == "segvae bench tiny-unet tiny-cvae"
    assert isinstance(doc["env"]["cpu_model"], str) and doc["env"]["cores_logical"] >= 1
    for p in ("fp32", "bf16", "int8"):
        assert set(doc["peak"][p]) >= {"gflops_per_s", "method", "note"}
    assert doc["peak"]["fp32"]["gflops_per_s"] > 0 and doc["peak"]["bf16"]["gflops_per_s"] > 0
    assert doc["peak"]["threads"] == doc["config"]["threads"]
    assert doc["config"]["isolation"] == "subprocess" and doc["config"]["world_size"] == 1
    if not CUDA:
        assert "ort-cuda" in doc["skipped"] and "CUDAExecutionProvider" in doc["skipped"]["ort-cuda"]
    assert not [k for k in doc["skipped"] if k != "ort-cuda"], doc["skipped"]

    num = (int, float)
    types = {"run": str, "experiment": str, "task": str, "backend": str, "precision": str, "scenario": str,
             "batch_size": int, "samples_per_s": num, "latency_ms": dict, "flops_per_sample": int,
             "gflops_per_s": num, "pct_of_peak": num, "peak_rss_mb": num, "model_bytes": int, "threads": int,
             "isolated": bool, "world_size": int}
    for r in doc["results"]:
        missing = set(RECORD_FIELDS) - set(r)
        assert not missing, (r["backend"], missing)
        for k, t in types.items():
            if k == "pct_of_peak" and r["backend"] == "ort-cuda":  # no GPU peak probe
                continue
            assert isinstance(r[k], t) and not isinstance(r[k], bool) or t is bool, (k, r[k])
        assert isinstance(r["isolated"], bool) and r["isolated"] is True
        assert r["rank"] is None and r["world_size"] == 1
        assert set(r["latency_ms"]) == set(sc.LATENCY_KEYS)
        assert r["compile_s"] is None  # no torch-compile in this run
        seg = r["task"] == "segmentation"
        for k in ("dice", "iou", "dice_delta"):
            assert (r[k] is not None) == seg and (r[k] is None or isinstance(r[k], float))
        for k in ("max_abs_err", "mean_abs_err", "judge_acc"):
            assert (r[k] is not None) == (not seg) and (r[k] is None or isinstance(r[k], float))
        if r["scenario"] == "server":
            assert set(SERVER_FIELDS) <= set(r)
            assert r["target_rate"] > 0 and r["achieved_rate"] > 0 and r["latency_bound_ms"] > 0
            assert isinstance(r["bound_met"], bool)
    got = {(r["run"], r["backend"], r["scenario"], r["batch_size"]) for r in doc["results"]}
    want = {(run, b, s, bs) for run in ("tiny-unet", "tiny-cvae") for b in MEASURED
            for s, bs in (("single-stream", 1), ("offline", 1), ("offline", 2), ("server", 1))}
    assert got == want and len(doc["results"]) == len(want)


def test_latencies_sorted_and_throughput(bench):
    doc, _ = bench
    for r in doc["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], lat
        assert lat["std"] >= 0 and lat["mean"] > 0
        assert r["samples_per_s"] > 0
        assert r["queries"] >= FAST["min_queries"] and r["duration_s"] >= FAST["min_duration"] or \
            r["scenario"] == "server"


# ---------------------------------------------------------------------------- accuracy
def test_unet_accuracy_equals_direct_computation(bench, runs, data_root):
    from harness.data import build_splits
    from harness.metrics import seg_metrics, seg_stats

    doc, _ = bench
    cfg, model = load_run(runs["unet"])
    test = build_splits(cfg, data_root)["test"]
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.stack([test[i][1] for i in range(len(test))])
    stats = []
    with _threads(doc["config"]["threads"]), torch.inference_mode():
        for idx, padded in _padded_batches(len(test), doc["config"]["accuracy_batch_size"]):
            stats.append(seg_stats(model(x[padded])[:len(idx)], y[idx]))
    direct = seg_metrics(torch.cat(stats))
    assert 0 < direct["dice"] < 1  # the fixture model is not degenerate
    eager = _recs(doc, run="tiny-unet", backend="torch-eager")
    assert eager and all(abs(r["dice"] - direct["dice"]) <= 1e-9 and abs(r["iou"] - direct["iou"]) <= 1e-9
                         and r["dice_delta"] == 0.0 for r in eager)
    assert doc["config"]["accuracy_samples_used"]["tiny-unet"] == len(test)
    for b in ("ort-fp32", "torch-channels-last"):
        for r in _recs(doc, run="tiny-unet", backend=b):
            assert abs(r["dice"] - direct["dice"]) <= 0.01, (b, r["dice"], direct["dice"])
            assert r["dice_delta"] == pytest.approx(r["dice"] - eager[0]["dice"], abs=1e-12)
    for b in ("ort-int8", "torch-bf16"):
        for r in _recs(doc, run="tiny-unet", backend=b):
            assert 0 <= r["dice"] <= 1 and 0 <= r["iou"] <= 1


def test_cvae_accuracy_and_judge(bench, runs, data_root):
    from harness.data import build_splits
    from harness.labelswap import swap_inputs

    doc, _ = bench
    cfg, model = load_run(runs["cvae"])
    assert (runs["cvae"] / "onnx" / "swap.onnx").is_file()  # exported by run_bench itself
    test = build_splits(cfg, data_root)["test"]
    s = swap_inputs(test, n=len(test), num_classes=cfg.num_classes, latent_dim=cfg.model["latent_dim"],
                    seed=0, spread=False)
    net, outs = LabelSwap(model).eval(), []
    with _threads(doc["config"]["threads"]), torch.inference_mode():
        for idx, padded in _padded_batches(len(test), doc["config"]["accuracy_batch_size"]):
            outs.append(net(*(s[k][padded] for k in ("image", "label", "new_label", "eps")))[:len(idx)])
    eager_out = torch.cat(outs).numpy()
    for r in _recs(doc, run="tiny-cvae", backend="torch-eager"):
        assert r["max_abs_err"] == 0.0 and r["mean_abs_err"] == 0.0
        assert r["judge_acc"] == pytest.approx(judge(eager_out, s["new_label"].numpy()), abs=1e-12)
    for r in _recs(doc, run="tiny-cvae", backend="ort-fp32"):
        assert r["max_abs_err"] < 1e-4 and r["mean_abs_err"] <= r["max_abs_err"]
    for r in _recs(doc, run="tiny-cvae"):
        assert 0 <= r["mean_abs_err"] <= r["max_abs_err"] < 0.5
        assert abs(r["judge_acc"] - judge(eager_out, s["new_label"].numpy())) < 0.05


# ---------------------------------------------------------------------------- FLOPs, peak, sizes
def test_flops_peak_and_sizes(bench, runs):
    from torch.utils.flop_counter import FlopCounterMode

    doc, _ = bench
    for name, run in runs.items():
        cfg, model = load_run(run)
        if cfg.task == "segmentation":
            args = (torch.randn(1, 3, cfg.image_size, cfg.image_size),)
        else:
            model = LabelSwap(model)
            args = (torch.rand(1, 1, 28, 28), torch.tensor([1]), torch.tensor([2]), torch.randn(1, cfg.model["latent_dim"]))
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            model(*args)
        for r in _recs(doc, run=run.name):
            assert r["flops_per_sample"] == fc.get_total_flops() > 0
            assert r["gflops_per_s"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e9, rel=1e-9)
            peak = doc["peak"][r["precision"]]["gflops_per_s"]
            if r["backend"] == "ort-cuda":  # a CPU probe says nothing about a GPU
                assert r["pct_of_peak"] is None
            else:
                assert r["pct_of_peak"] == pytest.approx(100 * r["gflops_per_s"] / peak, rel=1e-9)
            assert r["peak_rss_mb"] > 10 and r["threads"] == doc["config"]["threads"]
            if r["backend"].startswith("torch"):
                assert r["model_bytes"] == (run / WEIGHTS_FILE).stat().st_size
            else:
                onnx = run / "onnx" / {("segmentation", "fp32"): "model.onnx", ("segmentation", "int8"): "model.int8.onnx",
                                       ("cvae", "fp32"): "swap.onnx", ("cvae", "int8"): "swap.int8.onnx"}[(cfg.task, r["precision"])]
                assert r["model_bytes"] == files_size(onnx) >= onnx.stat().st_size


# ---------------------------------------------------------------------------- pieces
def test_config_validation():
    with pytest.raises(UserError, match="unknown backend"):
        BenchConfig(backends=["torch-nope"]).validate()
    with pytest.raises(UserError, match="unknown scenario"):
        BenchConfig(scenarios=["batch"]).validate()
    with pytest.raises(UserError, match="batch_sizes"):
        BenchConfig(batch_sizes=[0]).validate()
    assert BenchConfig(batch_sizes=[8, 1, 8]).validate().batch_sizes == [1, 8]
    assert set(REGISTRY) == {"torch-eager", "torch-channels-last", "torch-bf16", "torch-compile",
                             "ort-fp32", "ort-int8", "ort-cuda", "ort-tensorrt"}
    with pytest.raises(UserError, match="run directory not found"):
        run_bench(["/nonexistent/run"], BenchConfig(**FAST))


def test_scenarios_on_a_fake_model():
    calls = []

    def fn(inputs):
        calls.append(len(inputs["x"]))
        time.sleep(0.002)

    one = {"x": np.zeros((1, 3))}
    m = sc.single_stream(fn, one, min_queries=5, min_duration=0.05, warmup=2)
    assert len(m.latencies_s) >= 5 and m.duration_s >= 0.05 and m.latency_ms["p50"] >= 2.0
    m = sc.offline(fn, {"x": np.zeros((4, 3))}, 4, min_queries=3, min_duration=0.01, warmup=0)
    assert m.samples == 4 * len(m.latencies_s) and m.samples_per_s > 0
    m = sc.server(fn, one, rate=100.0, latency_bound_ms=50.0, min_queries=10, min_duration=0.2, warmup=0)
    lat = m.latency_ms
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and lat["p50"] >= 2.0
    assert m.extra["target_rate"] == 100.0 and 40 < m.extra["achieved_rate"] < 200
    assert m.extra["bound_met"] is True and m.extra["queries_served"] == m.extra["queries_offered"]
    # an overloaded server (rate far above capacity) misses a tight bound
    m = sc.server(fn, one, rate=2000.0, latency_bound_ms=3.0, min_queries=20, min_duration=0.02, warmup=0)
    assert m.extra["bound_met"] is False and m.extra["achieved_rate"] < 2000.0
    assert sc.latency_stats([0.001, 0.002, 0.003])["max"] == pytest.approx(3.0)


def test_torch_compile_backend(runs, monkeypatch):
    """One compile (tiny CVAE, batch 2) into the backend's persistent inductor cache: cold ~15 s
    on 2 cores, ~2 s once the cache is warm."""
    ok, why = TorchCompile.available()
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE)))
    cfg, _ = load_run(runs["cvae"])
    eager, comp = TorchEager(), TorchCompile()
    eager.load(runs["cvae"], cfg, 2)
    comp.load(runs["cvae"], cfg, 2)
    from harness.bench.backends import example_inputs
    x = example_inputs(cfg, 2)
    c = comp.prepare(2)
    assert c > 0 and comp.prepare(2) == c  # compile time recorded once per batch size
    np.testing.assert_allclose(comp(x), eager(x), atol=1e-5)
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).is_dir()


# ---------------------------------------------------------------------------- 2 processes
@pytest.mark.slow
def test_distributed_two_processes(runs, data_root, tmp_path):
    from tests.helpers import launch

    out = tmp_path / "bench.json"
    p = launch(2, "bench", runs["unet"], "--data-root", data_root, "--backends", "torch-eager,ort-fp32",
               "--scenarios", "single-stream,offline", "--batch-sizes", "1,2", "--min-duration", "0.05",
               "--min-queries", "3", "--out", out, timeout=300)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    if p.returncode != 0:  # known gloo abort at exit AFTER finishing; the file must be complete anyway
        assert "terminate called" in p.stderr, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(out)
    doc = json.loads(out.read_text())
    assert doc["config"]["world_size"] == 2 and doc["config"]["isolation"] == "none"
    for b in ("torch-eager", "ort-fp32"):
        for bs in (1, 2):
            per_rank = _recs(doc, backend=b, scenario="offline", batch_size=bs)
            ranks = sorted((r["rank"] for r in per_rank), key=lambda v: -1 if v is None else v)
            assert ranks == [None, 0, 1], ranks
            agg = next(r for r in per_rank if r["rank"] is None)
            assert agg["samples_per_s"] == pytest.approx(sum(r["samples_per_s"] for r in per_rank
                                                             if r["rank"] is not None), rel=1e-12)
            assert all(r["world_size"] == 2 and r["isolated"] is False for r in per_rank)
        ss = _recs(doc, backend=b, scenario="single-stream")
        assert len(ss) == 1 and ss[0]["rank"] is None
    # accuracy over the whole split, though each rank ran half of it
    assert doc["config"]["accuracy_samples_used"]["tiny-unet"] == 6
    eager = _recs(doc, backend="torch-eager")[0]
    assert 0 < eager["dice"] < 1 and all(abs(r["dice"] - eager["dice"]) <= 0.01 for r in doc["results"])


def test_in_process_without_reference_backend(runs, data_root, tmp_path, capsys):
    """isolate=False and no torch-eager among the backends: the accuracy reference is still computed."""
    cfg = BenchConfig(backends=["ort-fp32"], scenarios=["offline"], isolate=False, **{**FAST, "batch_sizes": [2]})
    doc = run_bench(runs["unet"], cfg, data_root=data_root, out=tmp_path / "b.json")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "b.json")
    assert doc["config"]["isolation"] == "none" and doc["config"]["backends_run"] == ["ort-fp32"]
    (r,) = doc["results"]
    assert r["isolated"] is False and r["backend"] == "ort-fp32" and r["scenario"] == "offline"
    assert r["dice_delta"] is not None and abs(r["dice_delta"]) <= 0.01
