"""`segvae profile` (per-layer time, PyTorch vs ORT), per-layer int8 error and the accuracy-aware int8
export, on tiny seeded fixture runs (tests/helpers.make_run) exported on the synthetic data tree.

No timing is asserted: the tables' structure, the join of every ORT node to a module, FLOPs that add
up, the int8 error ranking on a graph built to fail, and the fallback's verdicts are."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exports.layer_error import layer_errors, quantized_nodes
from harness.errors import UserError
from harness.export_stage import export_run
from harness.profile import (PROFILE_JSON, PROFILE_MD, TOP_LEVEL, UNATTRIBUTED, load_peak, module_flops,
                             profile_run)
from tests import helpers
from tests.helpers import tiny_config


def make_run(root, name: str):
    """A tiny random-init run of `name` under root (non-trivial BatchNorm statistics)."""
    return helpers.make_run(root / name, tiny_config(name), random_batchnorm=True)

PEAK = {"fp32": {"gflops_per_s": 100.0, "note": None},
        "bf16": {"gflops_per_s": 0.3, "note": "emulated: no native bf16"},
        "int8": {"gflops_per_s": None, "note": "torch._int_mm does not run"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("profile-runs")
    out = {}
    for name in ("unet-mp-tr-bce", "cvae-mnist"):
        out[name] = make_run(root, name)
        export_run(out[name], quantize="int8", data_root=data_root, calib_count=16, threads=1)
    return out


@pytest.fixture(scope="module")
def profiles(runs):
    return {name: profile_run(run, batch_size=4, threads=1, reps=6, peak=PEAK) for name, run in runs.items()}


@pytest.mark.parametrize("name", ["unet-mp-tr-bce", "cvae-mnist"])
def test_profile_joins_every_node_to_a_module(runs, profiles, name):
    from exports.onnx_export import graph_specs
    from harness.run_folder import load_run

    doc = profiles[name]
    cfg, model = load_run(runs[name])
    modules = {n or TOP_LEVEL for n, _ in graph_specs(cfg, model)[0].module.named_modules()}
    for backend in ("ort-fp32", "ort-int8"):
        nodes = doc["backends"][backend]["nodes"]
        assert nodes and not [n["node"] for n in nodes if n["module"] == UNATTRIBUTED]
        if backend == "ort-fp32" or cfg.task == "cvae":  # the fp32 graph is the torch module's own graph: same
            assert {n["module"] for n in nodes} <= modules  # names; the CVAE's rewritten int8 one keeps them too
    for backend, b in doc["backends"].items():  # each backend's layer times are its table's sum, shares add to 1
        layer_ms = [r["backends"][backend]["ms"] for r in doc["layers"] if backend in r["backends"]]
        assert math.isclose(sum(layer_ms), b["sum_ms"], rel_tol=1e-9)
        assert math.isclose(sum(r["backends"][backend]["share"] for r in doc["layers"] if backend in r["backends"]),
                            1.0, rel_tol=1e-9)
        assert b["bench_latency_ms"] > 0 and b["sum_vs_latency"] == pytest.approx(b["sum_ms"] / b["bench_latency_ms"])
    conv = next(r for r in doc["layers"] if r["gflop"] > 0 and "ort-int8" in r["backends"]
                and r["backends"]["ort-int8"]["precision"] == "int8")
    assert conv["backends"]["torch-eager"]["of_peak"] == pytest.approx(conv["backends"]["torch-eager"]["gops"] / 100.0)
    assert conv["backends"]["ort-int8"]["of_peak"] is None  # the int8 peak was not measured: no share claimed
    files = {p.name for p in runs[name].iterdir()}
    assert {PROFILE_JSON, PROFILE_MD} <= files
    assert json.loads((runs[name] / PROFILE_JSON).read_text())["layers"] == doc["layers"]


def test_cvae_int8_graph_runs_its_upsampling_int8_and_ranks_errors(profiles):
    """The int8 graph is quantized from the SubpixelUp4 form: the decoder's ConvTranspose layers (fp32 in
    ORT) are int8 Convs + DepthToSpace, joined to the same module rows as the fp32 graph's ConvTranspose."""
    doc = profiles["cvae-mnist"]
    assert "ConvTranspose" not in {r["op"] for r in doc["fp32_in_int8"]}
    for m in ("cvae.dec_blocks.1.conv", "cvae.dec_blocks.2.conv"):
        row = next(r for r in doc["layers"] if r["module"] == m)
        assert row["gflop"] > 0 and {"torch-eager", "ort-fp32", "ort-int8"} <= set(row["backends"])
        assert row["backends"]["ort-int8"]["precision"] == "int8"
        ops = {n["op"] for n in doc["backends"]["ort-int8"]["nodes"] if n["module"] == m}
        assert "QLinearConv" in ops and "DepthToSpace" in ops, ops
    errs = [r["int8_error"] for r in doc["layers"] if r.get("int8_error")]
    assert errs and all(math.isfinite(e["added"]) and e["err_out"] >= 0 for e in errs)


def test_module_flops_add_up_to_the_total(runs):
    from torch.utils.flop_counter import FlopCounterMode

    from exports.onnx_export import graph_specs
    from harness.run_folder import load_run

    cfg, model = load_run(runs["unet-mp-tr-bce"])
    net = graph_specs(cfg, model)[0].module.eval()
    x = [torch.randn(2, 3, 32, 32)]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(*x)
    own = module_flops(net, x)
    assert sum(own.values()) == fc.get_total_flops()
    first = net.stem[0][0]  # a 3 -> 4 channel 3x3 conv at 32 x 32, batch 2: 2 x MACs by hand
    assert own["stem.0.0"] == 2 * 2 * 32 * 32 * first.out_channels * first.in_channels * 9


class _Tick(torch.nn.Module):
    """Advances the fake clock by `before`, runs its children, then by `after`."""

    def __init__(self, clock, before, after, *children):
        super().__init__()
        self.clock, self.before, self.after = clock, before, after
        self.kids = torch.nn.ModuleList(children)

    def forward(self, x):
        self.clock[0] += self.before
        for k in self.kids:
            x = k(x)
        self.clock[0] += self.after
        return x


def test_torch_layers_gives_each_module_its_span_minus_its_children(monkeypatch):
    """A fake clock that only the modules advance: root 2+1 ns around a child of 5 ns that holds a
    grandchild of 7 ns, and a second child of 11 ns. Own times by hand: root 3, a 5, a.b 7, c 11;
    their sum is the root's span. The unprofiled calls are the bench call's, as many as the profiled."""
    from harness import profile

    clock = [0]
    root = _Tick(clock, 2, 1, _Tick(clock, 5, 0, _Tick(clock, 7, 0)), _Tick(clock, 0, 11))
    monkeypatch.setattr(profile.time, "perf_counter_ns", lambda: clock[0] * 1_000_000)  # 1 tick = 1 ms
    plain_calls = []
    layers, plain = profile.torch_layers(root, lambda: plain_calls.append(root(torch.zeros(1))), reps=5, warmup=2)
    assert layers == {TOP_LEVEL: 3.0, "kids.0": 5.0, "kids.0.kids.0": 7.0, "kids.1": 11.0}
    assert len(plain) == 5 and len(plain_calls) == 2 * 2 + 5 + 5  # warm-ups of both sides, hooked, plain


def test_alternate_takes_turns_in_blocks_and_names_the_timed_calls():
    order = []
    from harness.profile import alternate

    a, b, kept = alternate(
        lambda: order.append("a"), lambda: order.append("b"), reps=5, warmup=1, block=2)
    assert len(a) == len(b) == 5
    # warm-up ab, then blocks of 1 untimed + 2 timed calls each: aaa bbb aaa bbb aaa bbb
    assert "".join(order) == "ab" + "aaabbb" * 3
    assert kept == [2, 3, 5, 6, 8]  # ordinals among a's 10 calls: 0 warm-up, 1/4/7 switches, 9 past reps


def test_report_shows_the_profile(runs, profiles, tmp_path):
    from harness.report import build_report

    for run in runs.values():  # what `segvae train` writes beside config.json; the report lists trained runs
        (run / "metrics.json").write_text(json.dumps({"task": "segmentation" if "unet" in run.name else "cvae"}))
    paths = build_report(runs["cvae-mnist"].parent, out_dir=tmp_path)
    md = paths["md"].read_text()
    assert "Per layer: where the time goes" in md and "fp32 compute left in the int8 graph" in md
    assert "cvae.dec_blocks.1.conv" in md


def test_load_peak_reads_the_probe_and_refuses_emulated_figures(tmp_path):
    got = load_peak(PEAK)
    assert got["fp32"] == 100.0 and got["bf16"] is None and got["int8"] is None
    (tmp_path / "bench.json").write_text(json.dumps({"peak": {"fp32": {"gflops_per_s": 179.0}}}))
    assert load_peak(tmp_path / "bench.json")["fp32"] == 179.0
    assert load_peak(None) is None
    # the probe's status decides: a native int8 peak whose note mentions an emulated alternative (the AVX2
    # probe's "torch._int_mm not timed: emulated here") is a peak; status "emulated" is not
    probe = {"int8": {"gflops_per_s": 362.0, "status": "native", "note": "torch._int_mm not timed: emulated here"},
             "bf16": {"gflops_per_s": 5.0, "status": "emulated", "note": None}}
    assert load_peak(probe)["int8"] == 362.0 and load_peak(probe)["bf16"] is None
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="--peak"):
        load_peak(tmp_path / "bad.json")


def test_layer_errors_rank_a_corrupted_layer_first(runs, tmp_path):
    """A quantized conv whose weight scale is tripled (a broken layer, everything else intact) adds
    the most error."""
    from exports.onnx_export import build_metadata, export_graph, graph_specs
    from harness.export_data import dataset_info
    from harness.run_folder import load_run

    onnx_dir = runs["cvae-mnist"] / "onnx"
    # tensors are compared by name: against the graph the int8 one was quantized from (the rewritten
    # swap graph, not shipped; the same export again), not the shipped swap.onnx
    cfg, net = load_run(runs["cvae-mnist"])
    spec = graph_specs(cfg, net, pixel_shuffle_up=True)[0]
    source = tmp_path / "swap.int8-source.onnx"
    g = torch.Generator().manual_seed(0)
    example = (torch.rand(2, 1, 28, 28, generator=g), torch.tensor([1, 2]), torch.tensor([3, 4]),
               torch.randn(2, 8, generator=g))
    export_graph(spec, example, source, build_metadata(cfg, spec, dataset_info(cfg)))
    model = onnx.load(str(onnx_dir / "swap.int8.onnx"))
    target = next(n for n in quantized_nodes(model) if n.name == "node_conv2d_1")
    dq = {o: n for n in model.graph.node for o in n.output}[target.input[1]]
    inits = {i.name: i for i in model.graph.initializer}
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 3, scale.name))
    broken = tmp_path / "broken.int8.onnx"
    onnx.save(model, str(broken))
    rng = np.random.default_rng(0)
    batches = [{"image": rng.random((4, 1, 28, 28), dtype=np.float32), "label": rng.integers(0, 10, 4),
                "new_label": rng.integers(0, 10, 4), "eps": rng.standard_normal((4, 8), dtype=np.float32)}]
    rows = layer_errors(source, broken, batches)
    assert rows[0]["node"] == "node_conv2d_1" and rows[0]["module"] == "cvae.encoder.2"
    assert rows[0]["added"] > 0.5  # a 3x weight is ~200% off; the intact layers add a few percent
    intact = layer_errors(source, onnx_dir / "swap.int8.onnx", batches)
    assert {r["node"] for r in intact} == {r["node"] for r in rows}
    assert max(r["added"] for r in intact) < 0.2
    assert {"cvae.dec_blocks.1.conv", "cvae.dec_blocks.2.conv"} <= {r["module"] for r in intact}
    with pytest.raises(UserError, match="quantized from a graph with rewrites"):  # not the graph it was made from
        layer_errors(onnx_dir / "swap.onnx", broken, batches)


def test_accuracy_aware_int8_falls_back_until_the_gate_passes(tmp_path, data_root):
    """A CVAE bound no all-int8 graph meets: the most harmful nodes are tried in fp32, in ranking order,
    a node staying fp32 only when it lowers the error, until the gate passes; export.json records the
    nodes, the metric at each step and the speed. 8-bit weights (reduce_range off): their larger error
    leaves the fallback work to do on this fixture."""
    run = make_run(tmp_path, "cvae-mnist")
    kw = dict(quantize="int8", data_root=data_root, calib_count=16, threads=1, int8_fallback=True, reduce_range="off")
    probe = export_run(run, max_mae=1e-9, max_fallback=6, **kw)  # unreachable: 6 trials, then FAIL
    fb = probe["int8"]["fallback"]
    ranking = [r["node"] for r in probe["int8"]["layer_errors"]]
    assert [s.get("tried") for s in fb["steps"][1:]] == ranking[:6]
    assert probe["accuracy_gate"]["pass"] is False and "still failing" in fb["result"]
    kept = [s["tried"] for s in fb["steps"][1:] if s["kept_in_fp32"]]
    assert probe["int8"]["settings"]["nodes_to_exclude"] == kept == [n["node"] for n in fb["kept_fp32"]]
    maes = [s["gate"]["mae"] for s in fb["steps"]]
    for i, s in enumerate(fb["steps"][1:], 1):  # kept exactly when the error fell below every earlier kept step's
        best_before = min([maes[0]] + [maes[j] for j in range(1, i) if fb["steps"][j]["kept_in_fp32"]])
        assert s["kept_in_fp32"] == (maes[i] < best_before)
    assert probe["accuracy_gate"]["mae"] == pytest.approx(min([maes[0]] + [maes[i] for i in range(1, len(maes))
                                                                          if fb["steps"][i]["kept_in_fp32"]]))
    assert set(fb["speed"]["ms"]) == {"fp32", "int8_all", "int8_chosen"}
    assert kept, f"no fallback step lowered the error on this fixture: {maes}"
    k = next(i for i in range(1, len(maes)) if fb["steps"][i]["kept_in_fp32"])
    bound = (maes[k] + maes[0]) / 2   # met at trial k, missed by the all-int8 graph and every trial before
    got = export_run(run, max_mae=bound, max_fallback=6, **kw)
    fb = got["int8"]["fallback"]
    assert got["accuracy_gate"]["pass"] is True and [n["node"] for n in fb["kept_fp32"]] == [ranking[k - 1]]
    saved = json.loads((run / "onnx" / "export.json").read_text())
    assert saved["int8"]["fallback"]["kept_fp32"] == fb["kept_fp32"]
    from exports.quantize import node_precisions, optimized_graph
    kinds = node_precisions(optimized_graph(run / "onnx" / "swap.int8.onnx"))
    # the record says where each kept node really runs after ORT's fusion (excluded is not always fp32)
    assert [n["runs_in"] for n in fb["kept_fp32"]] == [kinds.get(n["node"]) for n in fb["kept_fp32"]]


def test_a_bf16_backend_is_profiled_against_the_bf16_peak(runs, tmp_path):
    """torch-bf16's layers are eager modules (hooks see them); their share is of the bf16 peak, not fp32's."""
    peak = {"fp32": {"gflops_per_s": 100.0, "status": "native"}, "bf16": {"gflops_per_s": 40.0, "status": "native"}}
    doc = profile_run(runs["unet-mp-tr-bce"], batch_size=2, threads=1, reps=4, peak=peak, backends=["torch-bf16"],
                      out_dir=tmp_path)
    b = doc["backends"]["torch-bf16"]
    assert b["precision"] == "bf16" and b["sum_ms"] > 0
    conv = next(r["backends"]["torch-bf16"] for r in doc["layers"] if r["gflop"] > 0 and "torch-bf16" in r["backends"])
    assert conv["precision"] == "bf16" and conv["of_peak"] == pytest.approx(conv["gops"] / 40.0)


@pytest.mark.parametrize("backend", ["ort-cuda", "torch-int8", "torch-compile", "no-such-backend"])
def test_profile_rejects_backends_it_cannot_time_per_layer(runs, backend):
    """A GPU session, or a compiled graph that module hooks would not see (they would time eager instead)."""
    with pytest.raises(UserError, match=f"cannot profile \\['{backend}'\\]"):
        profile_run(runs["cvae-mnist"], backends=[backend])


def test_unet_layer_errors_apply_the_relu_folded_into_a_conv(runs):
    """ORT's quantizer folds each UNet Conv's Relu into the Conv's QuantizeLinear: the Conv writes the
    Relu's tensor name unclamped. With the Relu applied before comparing it is a few percent off fp32,
    not ~100% (what comparing the raw tensor by name read, before the fix)."""
    export = json.loads((runs["unet-mp-tr-bce"] / "onnx" / "export.json").read_text())
    convs = [r for r in export["int8"]["layer_errors"] if r["op"] == "Conv"]
    conv_relus = [r for r in convs if not r["module"].startswith("ups.")]  # the upsamplers' 1x1 Convs have no Relu
    assert len(conv_relus) >= 8 and all(r["output"].startswith("relu") for r in conv_relus)
    assert max(r["err_out"] for r in convs) < 0.3, sorted(r["err_out"] for r in convs)[-3:]
