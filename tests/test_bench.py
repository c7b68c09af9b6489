"""`harness.bench` on tiny fixture runs: schema v2, rounds and paired speed-ups, one server rate per
model, accuracy equal to a direct computation on the deployed (BatchNorm-folded) form, the
accuracy gate (a judge's real predictions; a broken int8 graph caught), provenance (sha256, config
hashes, stale/missing onnx/ refused), torch-free ORT workers, IO binding, torch.compile cold/warm."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.bench import BenchConfig, run_bench
from harness.bench import scenarios as sc
from harness.bench import stats
from harness.bench.backends import REGISTRY, TorchCompile, TorchEager
from harness.bench.device import Device
from harness.bench.records import RECORD_FIELDS, SERVER_FIELDS, SCHEMA_VERSION
from harness.bench.trackers import ENV_FIELDS, files_size, sha256
from harness.data import build_splits
from harness.errors import UserError
from harness.run_folder import WEIGHTS_FILE, load_run, save_config
from tests.helpers import exported_tiny_runs

# one thread: OpenMP barriers with 2 threads on 2 busy cores (other tests running) make torch ~100x slower
FAST = dict(min_duration=0.02, min_queries=3, batch_sizes=[1, 2], warmup=1, peak_size=256, peak_reps=2, threads=1,
            rounds=3, settle_s=0.0)  # the pause after ORT's turns is tested on its own
BACKENDS = ["torch-eager", "torch-channels-last", "torch-bf16", "ort-fp32", "ort-int8", "ort-cuda"]
CUDA = REGISTRY["ort-cuda"].available(Device("cuda", 0))[0] and torch.cuda.is_available()
MEASURED = [b for b in BACKENDS if b != "ort-cuda" or CUDA]
CPU = Device("cpu", None)


class NearestMeanJudge:
    """A real (if simple) classifier: the class whose training-image mean is nearest. Its label-swap
    success depends on the generated images and on new_label, nothing else."""

    def __init__(self, train):
        x = torch.stack([train[i][0] for i in range(len(train))]).flatten(1).numpy()
        y = np.asarray(train.labels)
        self.means = np.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])

    def predict(self, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float64)
        return ((flat[:, None, :] - self.means[None]) ** 2).sum(-1).argmin(1)

    def __call__(self, images, new_labels) -> float:
        return float((self.predict(images) == np.asarray(new_labels)).mean())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    return exported_tiny_runs(tmp_path_factory.mktemp("bench-runs"), data_root)


@pytest.fixture(scope="module")
def judge(runs, data_root):
    return NearestMeanJudge(build_splits(load_run(runs["cvae"])[0], data_root)["train"])


@pytest.fixture(scope="module")
def bench(runs, data_root, judge, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out") / "bench.json"
    cfg = BenchConfig(backends=BACKENDS, scenarios=["single-stream", "offline", "server"], **FAST)
    doc = run_bench([runs["unet"], runs["cvae"]], cfg, data_root=data_root, out=out,
                    argv=["segvae", "bench", "tiny-unet", "tiny-cvae"], judge_fn=judge)
    return doc, out


def _recs(doc, **match):
    return [r for r in doc["results"] if all(r[k] == v for k, v in match.items())]


def _padded_batches(n: int, b: int):
    for lo in range(0, n, b):
        idx = np.arange(lo, min(lo + b, n))
        yield idx, np.concatenate([idx, np.full(b - len(idx), idx[0])])


def _deployed(run):
    """The module torch backends run: the exported graph's form (BatchNorm folded)."""
    from exports.onnx_export import graph_specs
    cfg, model = load_run(run)
    return cfg, graph_specs(cfg, model, fold_batchnorm=True)[0].module.eval()


# ---------------------------------------------------------------------------- schema
def test_schema(bench):
    doc, out = bench
    assert json.loads(Path(out).read_text()) == json.loads(json.dumps(doc))
    assert doc["version"] == SCHEMA_VERSION == 2
    assert set(ENV_FIELDS) <= set(doc["env"]) and doc["env"]["command"] == "segvae bench tiny-unet tiny-cvae"
    assert len(doc["env"]["git_commit"]) == 40 and isinstance(doc["env"]["git_dirty"], bool)
    assert isinstance(doc["env"]["cpu_flags"], list) and isinstance(doc["env"]["bf16_native"], bool)
    assert doc["config"]["isolation"] == "subprocess" and doc["config"]["device_resolved"] == "cpu"
    if not CUDA:
        assert "ort-cuda" in doc["skipped"] and "CUDAExecutionProvider" in doc["skipped"]["ort-cuda"]
    assert not [k for k in doc["skipped"] if k != "ort-cuda"], doc["skipped"]
    got = {(r["run"], r["backend"], r["scenario"], r["batch_size"]) for r in doc["results"]}
    want = {(run, b, s, bs) for run in ("tiny-unet", "tiny-cvae") for b in MEASURED
            for s, bs in (("single-stream", 1), ("offline", 1), ("offline", 2), ("server", 1))}
    assert got == want and len(doc["results"]) == len(want)
    for r in doc["results"]:
        assert not set(RECORD_FIELDS) - set(r), set(RECORD_FIELDS) - set(r)
        assert r["rounds"] == 3 and len(r["rounds_samples_per_s"]) == 3
        lo, hi = r["samples_per_s_ci"]
        assert lo <= r["samples_per_s"] <= hi and r["samples_per_s"] == float(np.median(r["rounds_samples_per_s"]))
        assert r["ci_coverage"] == pytest.approx(0.75)  # 3 rounds: [min, max] covers the median 75% of the time
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["max"] and set(r["latency_ms_ci"]) == set(lat)
        assert isinstance(r["stable"], bool) and r["stable"] == (not r["unstable_reasons"])
        assert r["loadgen_valid"] is False and r["loadgen_reasons"][0].startswith("not run with --mlperf")
        assert r["isolated"] is True and r["rank"] is None and r["world_size"] == 1
        assert r["accuracy_count"] == doc["config"]["accuracy_samples_used"][r["run"]]
        assert isinstance(r["accuracy_pass"], bool) and r["accuracy_gate"]["pass"] == r["accuracy_pass"]
        if r["scenario"] == "server":
            assert set(SERVER_FIELDS) <= set(r) and isinstance(r["bound_met"], bool)
    # one verdict line per (run, scenario, batch size), the same lines printed under the table
    assert {(v["run"], v["scenario"], v["batch_size"]) for v in doc["verdicts"]} == {k[:1] + k[2:] for k in got}
    for v in doc["verdicts"]:
        assert v["text"].startswith(f"{v['run']} {v['scenario']} bs{v['batch_size']}")
        assert v["int8_vs_fp32"] is not None and v["int8_vs_eager"] is not None


def test_validity_follows_loadgen_counts(bench):
    doc, _ = bench
    for r in _recs(doc, scenario="single-stream"):
        assert r["percentile_ok"]["p90"] == (r["queries_per_round"] >= 64)
        assert (not r["percentile_ok"]["p90"]) == any("p90 from" in s and "< 64" in s for s in r["unstable_reasons"])
        assert not r["percentile_ok"]["p99"]  # no round has 662 queries here
    for r in _recs(doc, scenario="server"):
        assert any("p99 from" in s and "< 662" in s for s in r["unstable_reasons"]) and r["stable"] is False
    order = doc["config"]["order"]
    for run in ("tiny-unet", "tiny-cvae"):  # every round's order recorded, shuffled: not all alike
        rounds = order["schedule"][run]
        assert len(rounds) == 3 and all(sorted(o["offline|2"]) == sorted(MEASURED) for o in rounds)
        assert len({tuple(o["offline|2"]) for o in rounds} | {tuple(o["single-stream|1"]) for o in rounds}) > 1


def test_speedups_are_paired_by_round(bench):
    doc, _ = bench
    for r in doc["results"]:
        ref = _recs(doc, run=r["run"], backend="torch-eager", scenario=r["scenario"], batch_size=r["batch_size"])[0]
        if r["backend"] == "torch-eager":
            assert r["speedup"] is None and r["speedup_p50"] is None
        elif r["scenario"] != "server":
            want = stats.paired_ratio_ci(r["rounds_samples_per_s"], ref["rounds_samples_per_s"])
            assert r["speedup"] == pytest.approx(want) and r["speedup"]["lo"] <= r["speedup"]["median"] <= r["speedup"]["hi"]
        if r["scenario"] != "offline" and r["backend"] != "torch-eager":
            assert r["speedup_p50"] == pytest.approx(stats.paired_ratio_ci(ref["rounds_p50_ms"], r["rounds_p50_ms"]))


def test_one_server_rate_and_bound_per_model(bench):
    doc, _ = bench
    for run in ("tiny-unet", "tiny-cvae"):
        recs = _recs(doc, run=run, scenario="server")
        s = doc["config"]["server"][run]
        assert {r["target_rate"] for r in recs} == {s["rate"]} and {r["latency_bound_ms"] for r in recs} == {s["bound_ms"]}
        ss = _recs(doc, run=run, backend="torch-eager", scenario="single-stream")[0]
        assert s["rate"] == pytest.approx(0.5 * ss["samples_per_s"]) and s["bound_ms"] == pytest.approx(2 * ss["latency_ms"]["p90"])


def test_provenance(bench, runs):
    doc, _ = bench
    for r in doc["results"]:
        run = runs["unet" if r["run"] == "tiny-unet" else "cvae"]
        cfg, _ = load_run(run)
        assert r["run_config_hash"] == cfg.hash()
        assert r["model_sha256"] == sha256(r["model_file"]) and r["model_bytes"] == files_size(r["model_file"])
        if r["backend"].startswith("ort"):
            assert r["export_config_hash"] == cfg.hash() and Path(r["model_file"]).parent == run / "onnx"
            assert r["torch_in_process"] is False  # ORT's peak RSS is measured without torch loaded
            assert r["form"]["io_binding"] is False and r["timing_includes_h2d"] is None
            assert r["form"]["spinning"] is True  # wait="spin", the default: ORT's own waiting
        else:
            assert r["model_file"] == str(run / WEIGHTS_FILE) and r["torch_in_process"] is True
            if r["task"] == "segmentation":
                assert "fold_batchnorm" in r["form"]["graph"]
        if r["backend"] == "torch-bf16":
            assert "converted once to bf16" in r["form"]["weights"] and r["form"]["channels_last"] is True
        # the rewrites of the graph it runs: BatchNorm folded in every UNet form; ConvTranspose as
        # Conv + DepthToSpace in ORT int8's graphs only (UNet: 1x1 Conv; CVAE decoder: 3x3 Conv)
        int8 = r["backend"] == "ort-int8"
        want = ({"subpixel_up4"} if int8 else set()) if r["task"] == "cvae" else \
            {"fold_batchnorm"} | ({"pixel_shuffle_up"} if int8 else set())
        assert set(r["graph_rewrites"]) == want, (r["backend"], r["graph_rewrites"])


def test_every_timed_process_keeps_freed_memory(bench, monkeypatch):
    """glibc malloc is told to keep freed memory (no page faults per eager forward) in every worker,
    unless the user's environment configures malloc itself; bench.json says which."""
    import subprocess
    import sys

    from harness.bench.process_env import MALLOC_SETTINGS, retain_freed_memory

    doc, _ = bench
    assert doc["config"]["malloc"]["torch workers"] == {"source": "mallopt",
                                                         **{k: v for k, (_, v) in MALLOC_SETTINGS.items()}}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    assert retain_freed_memory() == {"source": "environment", "MALLOC_TRIM_THRESHOLD_": "12345"}
    # a torch worker process applies it at start (mallopt accepted every parameter); an ORT one does not
    code = ("from harness.bench.worker import Worker; import sys; "
            "w = Worker(sys.argv[1], {'device': ['cpu', None], 'threads': 1}); print(w.malloc['source'], len(w.malloc))")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    out = [subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, check=True).stdout.split()
           for name in ("torch-eager", "ort-fp32")]
    assert out[0] == ["mallopt", str(1 + len(MALLOC_SETTINGS))] and out[1][:2] == ["not", "set"]


def test_flops_and_peak(bench, runs):
    from torch.utils.flop_counter import FlopCounterMode

    from harness.bench.backends import example_inputs

    doc, _ = bench
    for name, run in runs.items():
        cfg, net = _deployed(run)
        x = example_inputs(cfg, 1)
        args = [torch.from_numpy(x[k]) for k in (("image",) if cfg.task == "segmentation"
                                                  else ("image", "label", "new_label", "eps"))]
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            net(*args)
        for r in _recs(doc, run=run.name):
            assert r["flops_per_sample"] == fc.get_total_flops() > 0
            assert r["gflops_per_s"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e9, rel=1e-9)
            peak = doc["peak"][r["precision"]]
            native = r["precision_status"] == "native" and peak["status"] == "native"
            assert r["precision_status"] == doc["env"]["precisions"][r["precision"]][
                "ort" if r["backend"].startswith("ort") else "torch"]
            if native:  # a % of peak only against a peak this machine computes natively
                assert r["pct_of_peak"] == pytest.approx(100 * r["gflops_per_s"] / peak["gflops_per_s"], rel=1e-9)
            else:
                assert r["pct_of_peak"] is None
            assert r["peak_rss_mb"] > 10 and r["threads"] == doc["config"]["threads"] == 1
            # serving peak: load + timed rounds, the accuracy pass over the test inputs left out
            assert 10 < r["peak_rss_serving_mb"] <= r["peak_rss_mb"]
            n, per_sample = r["accuracy_count"], 4 * int(np.prod(example_inputs(cfg, 1)["image"].shape))
            if cfg.task == "cvae":  # label, new_label (int64) and eps (float32 x latent)
                per_sample += 8 + 8 + 4 * int(cfg.model["latent_dim"])
            assert r["accuracy_inputs_mb"] == pytest.approx(n * per_sample / 2**20)


# ---------------------------------------------------------------------------- accuracy
def test_unet_accuracy_equals_direct_computation(bench, runs, data_root):
    from harness.metrics import seg_metrics, seg_stats

    doc, _ = bench
    cfg, net = _deployed(runs["unet"])
    test = build_splits(cfg, data_root)["test"]
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.stack([test[i][1] for i in range(len(test))])
    torch.set_num_threads(1)
    with torch.inference_mode():
        direct = seg_metrics(torch.cat([seg_stats(net(x[p])[:len(i)], y[i])
                                        for i, p in _padded_batches(len(test), doc["config"]["accuracy_batch_size"])]))
    assert 0 < direct["dice"] < 1  # the fixture model is not degenerate
    for r in _recs(doc, run="tiny-unet", backend="torch-eager"):
        assert r["dice"] == pytest.approx(direct["dice"], abs=1e-9) and r["iou"] == pytest.approx(direct["iou"], abs=1e-9)
        assert r["dice_delta"] == 0.0 and r["accuracy_pass"] is True and r["accuracy_count"] == len(test)
    for r in _recs(doc, run="tiny-unet"):
        assert r["accuracy_pass"] == (r["dice"] >= 0.99 * direct["dice"]), (r["backend"], r["dice"])
        assert r["accuracy_gate"]["metric"] == "dice"
    for r in _recs(doc, run="tiny-unet", backend="ort-fp32"):
        assert abs(r["dice"] - direct["dice"]) <= 0.01 and r["accuracy_pass"] is True


def test_cvae_swap_gate_uses_the_judges_predictions(bench, runs, data_root, judge):
    from harness.labelswap import swap_inputs

    doc, _ = bench
    cfg, net = _deployed(runs["cvae"])
    test = build_splits(cfg, data_root)["test"]
    s = swap_inputs(test, n=len(test), num_classes=cfg.num_classes, latent_dim=cfg.model["latent_dim"], seed=0,
                    spread=False)
    with torch.inference_mode():
        eager = torch.cat([net(*(s[k][p] for k in ("image", "label", "new_label", "eps")))[:len(i)]
                           for i, p in _padded_batches(len(test), doc["config"]["accuracy_batch_size"])]).numpy()
    ref_acc = judge(eager, s["new_label"].numpy())
    # the judge really reads new_label: scoring against the original labels gives another figure
    assert ref_acc != judge(eager, s["label"].numpy())
    for r in _recs(doc, run="tiny-cvae"):
        if r["backend"] == "torch-eager":
            assert r["judge_acc"] == pytest.approx(ref_acc, abs=1e-12) and r["mean_abs_err"] == 0.0
        want = r["judge_acc"] >= 0.99 * ref_acc and r["mean_abs_err"] <= 0.02
        assert r["accuracy_pass"] == want and "judge" in r["accuracy_gate"]["metric"]
        assert r["accuracy_gate"]["ratio"] == pytest.approx(r["judge_acc"] / ref_acc)


def _broken_int8(src: Path, dst: Path) -> Path:
    """A copy of a run whose int8 graph outputs logits - 1e4: every pixel background."""
    import onnx
    from onnx import helper, numpy_helper

    shutil.copytree(src, dst)
    path = dst / "onnx" / "model.int8.onnx"
    m = onnx.load(str(path))
    out = m.graph.output[0].name
    m.graph.initializer.append(numpy_helper.from_array(np.array(1e4, dtype=np.float32), "broken_shift"))
    for node in m.graph.node:
        node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
    m.graph.node.append(helper.make_node("Sub", [f"{out}_pre", "broken_shift"], [out]))
    onnx.save(m, str(path))
    return dst


def test_int8_graph_that_fails_the_gate_is_caught(runs, data_root, tmp_path, capsys):
    broken = _broken_int8(runs["unet"], tmp_path / "broken-unet")
    cfg = BenchConfig(backends=["torch-eager", "ort-int8"], scenarios=["offline"], accuracy_samples=16,
                      **{**FAST, "batch_sizes": [2], "rounds": 2})
    doc = run_bench([broken, runs["cvae"]], cfg, data_root=data_root, out=tmp_path / "b.json")
    table = capsys.readouterr().out
    (bad,) = _recs(doc, run="broken-unet", backend="ort-int8")
    assert bad["dice"] == 0.0 and bad["accuracy_pass"] is False
    assert "fp32 reference" in bad["accuracy_gate"]["reasons"][0] and "FAIL" in table
    assert bad["model_sha256"] == sha256(broken / "onnx" / "model.int8.onnx")
    # accuracy_samples: a class-stratified subset of the CVAE's 32 test images (6 UNet images: all)
    from harness.bench.accuracy import class_labels, stratified_indices
    from harness.data import build_splits
    labels = class_labels(build_splits(load_run(runs["cvae"])[0], data_root)["test"])
    idx = stratified_indices(labels, 16, seed=0)
    assert doc["config"]["accuracy_class_counts"]["tiny-cvae"] == np.unique(labels[idx], return_counts=True)[1].tolist()
    assert all(r["accuracy_count"] == 16 for r in _recs(doc, run="tiny-cvae"))
    assert "stratified" in doc["config"]["accuracy_subset"]["tiny-cvae"]
    assert doc["config"]["accuracy_subset"]["broken-unet"] == "whole test split"
    (cv,) = _recs(doc, run="tiny-cvae", backend="ort-int8")  # no judge: MAE alone, and it says so
    assert cv["accuracy_gate"]["metric"].startswith("MAE") and cv["accuracy_pass"] == (cv["mean_abs_err"] <= 0.02)


def test_stale_or_missing_onnx_is_refused(runs, data_root, tmp_path):
    stale = tmp_path / "stale"
    shutil.copytree(runs["unet"], stale)
    cfg, _ = load_run(stale)
    save_config(stale, cfg.replace(epochs=cfg.epochs + 1))  # the run changed after its export
    bench_cfg = BenchConfig(backends=["ort-fp32"], scenarios=["offline"], **FAST)
    with pytest.raises(UserError, match=r"stale.*segvae export") as e:
        run_bench(stale, bench_cfg, data_root=data_root, out=tmp_path / "b.json")
    assert str(stale / "onnx") in str(e.value)
    shutil.rmtree(stale / "onnx")
    with pytest.raises(UserError, match=r"no onnx/ folder.*never exports.*segvae export"):
        run_bench(stale, bench_cfg, data_root=data_root, out=tmp_path / "b.json")
    assert not (stale / "onnx").exists() and not (tmp_path / "b.json").exists()


# ---------------------------------------------------------------------------- pieces
def test_io_binding_path_on_the_cpu_provider(runs):
    from harness.bench.backends_ort import OrtFP32
    from harness.run_folder import onnx_path

    cfg, _ = load_run(runs["cvae"])
    job = {"task": "cvae", "onnx": {"fp32": {"path": str(onnx_path(runs["cvae"], "cvae", "fp32"))}}}
    from harness.bench.backends import example_inputs
    x = example_inputs(cfg, 3)
    plain, bound = OrtFP32(), OrtFP32(io_binding=True)
    plain.load(job, 1, CPU)
    bound.load(job, 1, CPU)
    want = plain(x)
    np.testing.assert_array_equal(bound(x), want)
    binding = bound.bind(x)()
    np.testing.assert_array_equal(binding.outputs()[0], want)
    assert bound.form["io_binding"] is True and want.shape == (3, 1, 28, 28)


def test_config_validation():
    with pytest.raises(UserError, match="unknown backend"):
        BenchConfig(backends=["torch-nope"]).validate()
    with pytest.raises(UserError, match="unknown scenario"):
        BenchConfig(scenarios=["batch"]).validate()
    with pytest.raises(UserError, match="batch_sizes"):
        BenchConfig(batch_sizes=[0]).validate()
    with pytest.raises(UserError, match="rounds"):
        BenchConfig(rounds=0).validate()
    with pytest.raises(UserError, match="invalid wait='busy'"):
        BenchConfig(wait="busy").validate()
    with pytest.raises(UserError, match="--device 'tpu'"):
        BenchConfig(device="tpu").validate()
    assert BenchConfig(batch_sizes=[8, 1, 8]).validate().batch_sizes == [1, 8]
    assert BenchConfig(mlperf=True).timing("offline", 32) == {"min_queries": 768, "min_duration": 600.0}
    assert BenchConfig(mlperf=True).timing("server", 1)["min_queries"] == 662
    assert set(REGISTRY) == {"torch-eager", "torch-channels-last", "torch-bf16", "torch-fp16", "torch-compile", "torch-int8",
                             "ort-fp32", "ort-int8", "ort-cuda", "ort-cuda-fp16", "ort-tensorrt", "openvino-fp32", "openvino-bf16",
                             "openvino-int8"}
    assert REGISTRY["torch-fp16"].available(CPU)[0] is False and REGISTRY["ort-cuda-fp16"].available(CPU)[0] is False
    with pytest.raises(UserError, match="run directory not found"):
        run_bench(["/nonexistent/run"], BenchConfig(**FAST))


def test_scenarios_on_a_fake_model():
    calls = []

    def run():
        calls.append(1)
        time.sleep(0.002)

    m = sc.single_stream(run, min_queries=5, min_duration=0.05, warmup=2)
    assert len(m.latencies_s) >= 5 and m.duration_s >= 0.05 and m.latency_ms["p50"] >= 2.0
    m = sc.offline(run, 4, min_queries=3, min_duration=0.01, warmup=0)
    assert m.samples == 4 * len(m.latencies_s) and m.samples_per_s > 0
    m = sc.server(run, rate=100.0, latency_bound_ms=50.0, min_queries=10, min_duration=0.2, warmup=0)
    assert m.extra["bound_met"] is True and m.extra["queries_served"] == m.extra["queries_offered"]
    m = sc.server(run, rate=2000.0, latency_bound_ms=3.0, min_queries=20, min_duration=0.02, warmup=0)
    assert m.extra["bound_met"] is False and m.extra["achieved_rate"] < 2000.0
    assert sc.latency_stats([0.001, 0.002, 0.003, 0.004])["p50"] == pytest.approx(3.0)  # index floor(4 * 0.5) = 2


def test_rate_search_finds_the_capacity():
    """A 5 ms server (capacity <= 200/s) with a 15 ms bound: the highest passing rate lies below
    capacity, and the search bracketed it (a failing probe above it)."""
    def run():
        time.sleep(0.005)
    out = sc.search_rate(run, start_rate=50.0, latency_bound_ms=15.0, min_queries=20, min_duration=0.2, warmup=0,
                         steps=2)
    assert out["rate"] is not None and out["rate"] < 200.0
    assert max(p[0] for p in out["probes"] if p[2]) == out["rate"]
    assert any(not p[2] and p[0] > out["rate"] for p in out["probes"])
    assert all(p[2] == (p[1] <= 15.0) or not p[2] for p in out["probes"])


@pytest.mark.slow
def test_torch_compile_cold_and_warm(runs):
    """One compile of the tiny CVAE at batch 2 into an empty inductor cache, then again warm."""
    ok, why = TorchCompile.available(CPU)
    if not ok:
        pytest.skip(why)
    cfg, _ = load_run(runs["cvae"])
    job = {"run_dir": str(runs["cvae"]), "task": "cvae"}
    eager, comp = TorchEager(), TorchCompile()
    eager.load(job, 1, CPU)
    comp.load(job, 1, CPU)
    from harness.bench.backends import example_inputs
    x = example_inputs(cfg, 2)
    c = comp.prepare(2)
    assert c["cold"] > 0 and c["warm"] > 0 and "empty" in c["note"] and comp.prepare(2) is c
    np.testing.assert_allclose(comp(x), eager(x), atol=1e-5)
    cache = comp._cache
    comp.close()
    assert not Path(cache).exists()


@pytest.mark.slow
def test_torch_compile_cache_shared_by_fresh_processes(runs, tmp_path):
    """--processes: the backend's first process compiles cold into the run's cache and leaves it;
    a later one finds it filled and reports one warm compile, labelled so, with the same outputs."""
    ok, why = TorchCompile.available(CPU)
    if not ok:
        pytest.skip(why)
    cfg, _ = load_run(runs["cvae"])
    job = {"run_dir": str(runs["cvae"]), "task": "cvae", "compile_cache": str(tmp_path / "inductor")}
    from harness.bench.backends import example_inputs
    x = example_inputs(cfg, 2)
    first = TorchCompile()
    first.load(job, 1, CPU)
    c1 = first.prepare(2)
    y1 = first(x)
    first.close()
    assert c1["cold"] > 0 and "empty" in c1["note"] and any((tmp_path / "inductor").iterdir())
    later = TorchCompile()
    later.load(job, 1, CPU)
    c2 = later.prepare(2)
    assert set(c2) == {"warm", "note"} and c2["warm"] > 0 and "filled by the backend's first process" in c2["note"]
    np.testing.assert_allclose(later(x), y1, atol=1e-6)
    later.close()
    assert (tmp_path / "inductor").is_dir()  # a given cache is the bench's to remove


# ---------------------------------------------------------------------------- 2 processes / in process
@pytest.mark.slow
def test_distributed_two_processes(runs, data_root, tmp_path):
    from tests.helpers import launch

    out = tmp_path / "bench.json"
    p = launch(2, "bench", runs["unet"], "--data-root", data_root, "--backends", "torch-eager,ort-fp32",
               "--scenarios", "single-stream,offline", "--batch-sizes", "1,2", "--min-duration", "0.02",
               "--min-queries", "3", "--rounds", "2", "--out", out, timeout=300)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    if p.returncode != 0:  # known gloo abort at exit AFTER finishing; the file must be complete anyway
        assert "terminate called" in p.stderr, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(out)
    doc = json.loads(out.read_text())
    assert doc["config"]["world_size"] == 2 and doc["config"]["isolation"] == "none"
    for b in ("torch-eager", "ort-fp32"):
        for bs in (1, 2):
            per_rank = _recs(doc, backend=b, scenario="offline", batch_size=bs)
            assert sorted(per_rank, key=lambda r: -1 if r["rank"] is None else r["rank"])[0]["rank"] is None
            assert sorted(r["rank"] for r in per_rank if r["rank"] is not None) == [0, 1]
            agg = next(r for r in per_rank if r["rank"] is None)
            for i in range(2):  # round i of the job = the ranks' round-i throughputs added
                assert agg["rounds_samples_per_s"][i] == pytest.approx(
                    sum(r["rounds_samples_per_s"][i] for r in per_rank if r["rank"] is not None), rel=1e-9)
        assert len(_recs(doc, backend=b, scenario="single-stream")) == 1
    assert doc["config"]["accuracy_samples_used"]["tiny-unet"] == 6
    eager = _recs(doc, backend="torch-eager")[0]
    assert 0 < eager["dice"] < 1 and all(abs(r["dice"] - eager["dice"]) <= 0.01 for r in doc["results"])


def test_given_server_rate_and_search(runs, data_root, tmp_path):
    """--server-qps/--latency-bound-ms given: every backend gets them; --server-search records the
    highest passing rate per backend with its probes; a judge that raises falls back to MAE."""
    def broken_judge(images, new_labels):
        raise RuntimeError("judge weights missing")

    cfg = BenchConfig(backends=["torch-eager", "ort-fp32"], scenarios=["server"], server_qps=40.0,
                      latency_bound_ms=200.0, server_search=True, isolate=False, **{**FAST, "rounds": 1})
    doc = run_bench(runs["cvae"], cfg, data_root=data_root, out=tmp_path / "b.json", judge_fn=broken_judge)
    assert doc["config"]["server"]["tiny-cvae"]["from"] == "given"
    for r in doc["results"]:
        assert r["target_rate"] == 40.0 and r["latency_bound_ms"] == 200.0
        assert r["search_probes"] and r["max_rate"] == max((p[0] for p in r["search_probes"] if p[2]), default=None)
        assert r["judge_acc"] is None and "judge failed" in r["accuracy_gate"]["metric"]


def test_in_process_without_reference_backend(runs, data_root, tmp_path, capsys):
    """isolate=False and no torch-eager among the backends: the accuracy reference is still computed."""
    cfg = BenchConfig(backends=["ort-fp32"], scenarios=["offline"], isolate=False, **{**FAST, "batch_sizes": [2]})
    doc = run_bench(runs["unet"], cfg, data_root=data_root, out=tmp_path / "b.json")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "b.json")
    assert doc["config"]["isolation"] == "none" and doc["config"]["backends_run"] == ["ort-fp32"]
    (r,) = doc["results"]
    assert r["isolated"] is False and r["backend"] == "ort-fp32" and r["speedup"] is None
    assert r["dice_delta"] is not None and abs(r["dice_delta"]) <= 0.01 and r["accuracy_pass"] is True


def test_rounds_split_among_fresh_worker_processes(runs, data_root, tmp_path):
    """--processes 3 with 3 rounds: each backend's rounds come from 3 distinct processes (its load
    repeated in each), and nothing else about the record changes."""
    from harness.bench.runner import _generations

    assert _generations(9, 3) == [3, 6] and _generations(9, 1) == [] and _generations(5, 2) == [3]
    with pytest.raises(UserError, match="processes=4: expected at most rounds=3"):
        BenchConfig(processes=4, rounds=3).validate()
    cfg = BenchConfig(backends=["torch-eager", "ort-fp32"], scenarios=["single-stream"],
                      processes=3, **{**FAST, "batch_sizes": [1]})
    doc = run_bench(runs["unet"], cfg, data_root=data_root, out=tmp_path / "b.json")
    assert doc["config"]["processes_used"] == 3
    for r in doc["results"]:
        assert len(set(r["worker_pids"])) == 3 and os.getpid() not in r["worker_pids"]
        assert r["rounds"] == 3 and len(r["rounds_samples_per_s"]) == 3 and r["peak_rss_mb"] > 0


def test_round_budget_fits_rounds_to_the_time_left(monkeypatch):
    """After each round: as many more as the budget's time left allows at the mean round time so far,
    between 6 (96.9% interval) and --rounds; hand-computed on a fake clock."""
    from harness.bench import runner

    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])
    for round_s, want in ((1.0, [12]), (10.0, [6]), (30.0, [6]), (6.0, [10, 10, 10])):
        b = runner.RoundBudget(budget_s=100.0, start=0.0, rounds=12)
        clock[0] = 40.0  # loading and the accuracy pass took 40 s
        b.begin()
        got = []
        for done in range(1, len(want) + 1):
            clock[0] = 40.0 + done * round_s
            got.append(b(None, done))
        # e.g. 6 s rounds: after round 1, 54 s left -> 1 + 9 = 10; after round 2, 48 s -> 2 + 8 = 10 ... ;
        # 10 s rounds: 1 + 5 = 6; 30 s rounds: 1 + 1 = 2, floored at 6; 1 s rounds: capped at 12
        assert got == want, (round_s, got)
    assert b.record(11)["fitted"] is True and b.record(12)["fitted"] is False and b.record(12)["round_s"] == 6.0


def test_bench_over_budget_runs_fewer_rounds_and_stays_stable(runs, data_root, tmp_path):
    """A budget already spent: the bench runs the floor of 6 rounds instead of 8, every record says 6
    rounds and is stable (the schedule's rounds all completed), and config.budget says it was fitted."""
    cfg = BenchConfig(backends=["ort-fp32"], scenarios=["offline"], isolate=False,
                      **{**FAST, "batch_sizes": [2], "rounds": 8}, budget_s=1e-3)
    doc = run_bench(runs["unet"], cfg, data_root=data_root, out=tmp_path / "b.json")
    (r,) = doc["results"]
    assert r["rounds"] == 6 and len(r["rounds_samples_per_s"]) == 6 and r["stable"] is True
    (b,) = doc["config"]["budget"].values()
    assert b["fitted"] is True and b["rounds_run"] == 6 and b["rounds_asked"] == 8


def test_a_turn_after_an_ort_backend_waits_for_its_spinning_threads(runs, data_root, tmp_path, monkeypatch):
    """Under --wait spin every turn that follows an ORT backend's (another backend, or the next item's or
    round's first) starts after settle_s; none other does; under passive waiting none does by default."""
    import time as time_module

    from harness.bench.runner import settle_s

    assert settle_s(BenchConfig()) == 0.25 and settle_s(BenchConfig(wait="passive")) == 0.0
    assert settle_s(BenchConfig(wait="passive", settle_s=0.1)) == 0.1
    with pytest.raises(UserError, match="invalid settle_s=-1"):
        BenchConfig(settle_s=-1).validate()
    pauses = []
    real_sleep = time_module.sleep
    monkeypatch.setattr(time_module, "sleep", lambda s: pauses.append(s) if s == 0.0123 else real_sleep(s))
    cfg = BenchConfig(backends=["torch-eager", "ort-fp32", "ort-int8"], scenarios=["single-stream", "offline"],
                      isolate=False, **{**FAST, "batch_sizes": [2], "settle_s": 0.0123, "rounds": 4})
    doc = run_bench(runs["unet"], cfg, data_root=data_root, out=tmp_path / "b.json")
    (schedule,) = doc["config"]["order"]["schedule"].values()  # the turns in the order they ran
    turns = [name for orders in schedule for item_order in orders.values() for name in item_order]
    after_ort = sum(prev != now and prev.startswith("ort-") for prev, now in zip(turns, turns[1:]))
    after_torch = sum(prev != now and prev == "torch-eager" for prev, now in zip(turns, turns[1:]))
    assert after_ort > 0 and after_torch > 0 and len(pauses) == after_ort  # a turn after torch's: no pause
    assert doc["config"]["settle_s_used"] == 0.0123
