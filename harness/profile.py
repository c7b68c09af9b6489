"""`segvae profile RUN`: where the time goes, layer by layer, in PyTorch and in each ONNX Runtime graph.

For one run and batch size, at the bench's threads, each backend's own bound call (the bench's
bind/run, no profiler) takes turns with a profiled call, so the two see the same machine:
  torch-eager   (and torch-channels-last, torch-bf16) a clock on every nn.Module's forward (global
                forward hooks, perf_counter_ns) on the module the bench runs (graph_specs' inference
                form, in the backend's layout and dtype), call for call; a layer's time is
                its span minus its child modules' spans (so nothing is counted twice and the spans of
                one call add up to the whole forward). torch.profiler is not used: its per-op events
                cost as much as a small model's work at batch 8 (its sums read 1.2-1.5x the latency).
  ort-fp32/int8 ORT's profiler (SessionOptions.enable_profiling) on a session with the bench's own
                settings (exports.session.OrtSession: threads, sequential, spinning as the bench's
                --wait), in blocks of 4 runs against the bench's session; each node's `*_kernel_time`.
Joining ORT nodes to modules: the dynamo exporter writes each node's module path into its metadata
(`pkg.torch.onnx.name_scopes`, e.g. ['', 'encoders.0', 'encoders.0.1', 'encoders.0.1.0', 'conv2d_3'];
the module is the last scope before the op's own name). ORT's optimizer keeps a fused node's name
(`node_conv2d_3`, with a `_token_N` suffix when it was rebuilt), so a profiled node is looked up by
name in the exported file; a Quantize/DequantizeLinear is named after its tensor (`conv2d_3_Quantize
Linear`: the module that wrote it, or whose weight it is); a node ORT inserted (layout Transposes,
NCHWc Reorder*) takes the module of the node it feeds or is fed by in ORT's optimized graph. What
cannot be joined is listed as "(unattributed)".

Each backend's per-layer times must add up to its latency as the bench measures it (the median of
the unprofiled calls above, same batch): the table records both and the ratio. ORT's profiler costs
some microseconds a node, inside each node's time: a graph of ~50-80 nodes of ~30 us each (the
MNIST CVAE at batch 8) reads 10-20% over its latency.
GOP/s per layer: torch.utils.flop_counter FLOPs of the module (convs and matmuls; 2 x MACs) / its
time, against the machine's peak for the precision the layer ran in (the bench's matmul probe:
a peak dict, bench.json's "peak", or the probe's JSON; an emulated or missing peak gives no %).
int8 error per layer: export.json's `int8.layer_errors` (exports.layer_error), worst node per module.
"""
from __future__ import annotations

import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

from harness.bench.process_env import SPIN_SETTLE_S, retain_freed_memory
from harness.errors import UserError
from harness.io import atomic_write_json, atomic_write_text, read_json

__all__ = ["profile_run", "torch_layers", "ort_layers", "node_modules", "load_peak", "format_markdown"]

BACKENDS = ("torch-eager", "ort-fp32", "ort-int8")
# eager modules take hooks (torch.compile's graphs do not), ORT's CPU sessions a profiler
PROFILABLE = ("torch-eager", "torch-channels-last", "torch-bf16", "ort-fp32", "ort-int8")
PROFILE_JSON, PROFILE_MD = "profile.json", "profile.md"
TOP_LEVEL = "(top level)"
UNATTRIBUTED = "(unattributed)"


# =========================================================================== peak
def load_peak(peak) -> dict | None:
    """precision -> GOP/s from a peak dict (the bench's probe_peak result), a bench.json (its "peak")
    or the probe's own JSON; None when not given. A precision the probe marked emulated, failed or
    left out maps to None (no share of peak is then claimed)."""
    if peak is None:
        return None
    if isinstance(peak, (str, Path)):
        doc = read_json(peak, "--peak")
        peak = doc.get("peak", doc) if isinstance(doc, dict) else None
    if not isinstance(peak, dict):
        raise UserError("--peak: expected a JSON object with the matmul probe's figures (bench.json's \"peak\", or "
                        "{\"fp32\": {\"gflops_per_s\": ...}, \"int8\": ...})")
    out = {}
    for prec in ("fp32", "bf16", "int8", "fp16"):
        v = peak.get(prec)
        g = v.get("gflops_per_s") if isinstance(v, dict) else v
        # the probe's status says; only a file without one falls back to its note (whose text may mention
        # an emulated alternative it did not time, e.g. int8's "torch._int_mm not timed: emulated here")
        emulated = isinstance(v, dict) and (v.get("status") == "emulated" or (
            v.get("status") is None and "emulat" in str(v.get("note") or "").lower()))
        out[prec] = float(g) if isinstance(g, (int, float)) and g > 0 and not emulated else None
    return out


# =========================================================================== PyTorch
def torch_layers(net, run, reps: int, warmup: int = 3) -> tuple[dict[str, float], list[float]]:
    """(module name -> ms per forward of its own work (its span minus its child modules'), averaged
    over the middle half of the timed calls (see _central_mean); the untimed calls' ms).

    `run` is the bench backend's own bound call on `net`. Calls alternate: one with a clock on every
    module (global forward hooks, perf_counter_ns: a few us a module, where torch.profiler's per-op
    events cost more than a small model's work), then the same call with no hook, so both sides see
    the same machine on a host whose speed drifts within minutes."""
    import torch
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    clock = time.perf_counter_ns
    names = {id(m): name or TOP_LEVEL for name, m in net.named_modules()}
    stack: list[tuple[str, int]] = []
    calls: list[dict[str, float]] = []

    def pre(m, args):
        if id(m) in names:
            stack.append((names[id(m)], clock()))

    def post(m, args, out):
        if id(m) in names:
            t1 = clock()
            name, t0 = stack.pop()
            own = calls[-1]
            own[name] += t1 - t0
            if stack:  # the parent's own time excludes this child's span
                own[stack[-1][0]] -= t1 - t0

    def hooked():
        calls.append(defaultdict(float))
        handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        try:
            run()
        finally:
            for h in handles:
                h.remove()
    with torch.inference_mode():
        _, plain, kept = alternate(hooked, run, reps, warmup)
    return _central_mean([calls[i] for i in kept], 1e-6)[0], plain  # ns -> ms


def alternate(first, second, reps: int, warmup: int = 3, block: int = 1,
              pause_s: float = 0.0) -> tuple[list[float], list[float], list[int]]:
    """Both callables `warmup` times each, then `reps` timed calls each in alternating blocks of
    `block` (with block > 1 each block starts with one more, untimed call: it pays for the switch),
    sleeping `pause_s` before each block.
    Returns the timed calls' ms for each side and the ordinals of `first`'s timed calls (counting
    every call to it, warm-ups included), for a profiler that records every call."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    kept, calls = [], warmup
    while min(len(t) for t in times) < reps:
        for side, fn in enumerate((first, second)):
            time.sleep(pause_s)
            for i in range(block + (block > 1)):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if (block == 1 or i > 0) and len(times[side]) < reps:
                    times[side].append(1e3 * dt)
                    if side == 0:
                        kept.append(calls)
                calls += side == 0
    return times[0], times[1], kept


def _central_mean(calls: list[dict[str, float]], scale: float) -> tuple[dict[str, float], float]:
    """(key -> mean over the middle half of the calls ranked by their total, that half's mean total).
    A call the OS preempted (a shared machine) falls outside the middle half, and the layers of the
    calls kept still add up exactly to their total: a per-layer median would not."""
    ranked = sorted(calls, key=lambda c: sum(c.values()))
    n = len(ranked)
    mid = ranked[n // 4: max(n // 4 + 1, (3 * n) // 4)]
    keys = {k for c in mid for k in c}
    layers = {k: scale * sum(c.get(k, 0.0) for c in mid) / len(mid) for k in keys}
    return layers, sum(layers.values())


# =========================================================================== ONNX Runtime
def node_modules(exported, optimized) -> dict[str, str]:
    """ORT (optimized) node name -> the module it came from (see the module docstring for the rules)."""
    from exports.layer_error import module_of

    by_name = {n.name: n for n in exported.graph.node}
    producer = {o: n for n in exported.graph.node for o in n.output}
    weights = {i.name for i in exported.graph.initializer}

    def made(tensor: str, op: str) -> str | None:
        """The module of the node that wrote `tensor`, walking back through single-input nodes
        ORT fused into an `op` (Conv + Relu is named after the Relu's output, and is the Conv's work)."""
        p = producer.get(tensor)
        first = p
        for _ in range(4):
            if p is None or p.op_type == op:
                break
            p = producer.get(p.input[0]) if p.input else None
        p = p if p is not None and p.op_type == op else first
        return (module_of(p) or TOP_LEVEL) if p is not None else None

    def direct(name: str, op: str) -> str | None:
        base = re.sub(r"(_token_\d+)+$", "", name)
        if base in by_name:
            return module_of(by_name[base]) or TOP_LEVEL
        if base.endswith("_nchwc"):  # NCHWc transformer: named after the fused node's output tensor
            return made(base[: -len("_nchwc")], op)
        for suffix in ("_QuantizeLinear", "_DequantizeLinear"):
            if base.endswith(suffix):
                t = base[: -len(suffix)]
                if t in weights or "." in t and t.rsplit(".", 1)[1] in ("weight", "bias"):
                    return t.rsplit(".", 1)[0]
                if t in producer:
                    return module_of(producer[t]) or TOP_LEVEL
                return TOP_LEVEL  # a graph input's quantization
        return None

    out: dict[str, str] = {}
    for n in optimized.graph.node:
        m = direct(n.name, n.op_type)
        if m is not None:
            out[n.name] = m
    consumers = defaultdict(list)
    made_by = {}
    for n in optimized.graph.node:
        for i in n.input:
            consumers[i].append(n)
        for o in n.output:
            made_by[o] = n
    for _ in range(4):  # inserted nodes: borrow a neighbour's module (a chain of them resolves in turns)
        for n in optimized.graph.node:
            if n.name in out:
                continue
            near = [c for o in n.output for c in consumers[o]] + [made_by[i] for i in n.input if i in made_by]
            found = next((out[c.name] for c in near if c.name in out), None)
            if found is not None:
                out[n.name] = found
    return out


def ort_trace_ms(trace: list, kept: list[int]) -> tuple[dict[str, float], dict[str, str], int]:
    """(node name -> ms per run (see _central_mean), node name -> op type, runs counted) from ORT's profile trace,
    counting the runs whose ordinals (0 = the session's first run) are in `kept`."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    runs = [runs[i] for i in kept if i < len(runs)]
    if not runs:
        raise UserError("ONNX Runtime's profile holds no timed run")
    calls: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    starts = [r[0] for r in runs]
    ops: dict[str, str] = {}
    import bisect
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            i = bisect.bisect_right(starts, e["ts"]) - 1
            if i < 0 or e["ts"] > runs[i][1]:
                continue  # a warm-up run's node, or one that paid for a switch
            node = e["name"][: -len("_kernel_time")]
            calls[i][node] += e["dur"]
            ops[node] = e.get("args", {}).get("op_name", "?")
    return _central_mean(calls, 1e-3)[0], ops, len(runs)


def ort_layers(path: Path, feed: dict, threads: int, reps: int, spinning: bool, run, opt_level: str = "all",
               warmup: int = 3, block: int = 4, pause_s: float = SPIN_SETTLE_S) -> tuple[dict, list[float]]:
    """({"layers": module -> ms, "nodes": [...]}, the untimed calls' ms) for one ORT graph.

    A profiling session on the bench's own settings takes turns with `run`, the bench backend's own
    bound call, in blocks of `block` runs after a pause of `pause_s`, so both sides see the same
    machine: the session that ran last keeps its threads spinning (with --wait spin) for tens of ms,
    and the other would run on the cores they hold (process_env.SPIN_SETTLE_S says what was measured)."""
    import tempfile

    import onnx

    from exports.quantize import node_precisions, optimized_graph
    from exports.session import OrtSession

    with tempfile.TemporaryDirectory(prefix="segvae-profile-") as tmp:
        sess = OrtSession(path, threads=threads, graph_optimization=opt_level, spinning=spinning, device="cpu",
                          profile=str(Path(tmp) / "ort"))
        _, plain, kept = alternate(lambda: sess.run_unchecked(feed), run, reps, warmup, block, pause_s)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    ms, ops, _ = ort_trace_ms(trace, kept)
    optimized = optimized_graph(path, opt_level)
    modules = node_modules(onnx.load(str(path), load_external_data=False), optimized)
    precision = node_precisions(optimized)
    nodes = [{"node": n, "op": ops[n], "module": modules.get(n, UNATTRIBUTED), "ms": t,
              "precision": precision.get(n)} for n, t in sorted(ms.items(), key=lambda kv: -kv[1])]
    layers: dict[str, float] = defaultdict(float)
    for r in nodes:
        layers[r["module"]] += r["ms"]
    return {"layers": dict(layers), "nodes": nodes}, plain


# =========================================================================== FLOPs
def module_flops(net, args: list) -> dict[str, int]:
    """module name -> FLOPs of one forward that its OWN ops perform (convs and matmuls; 2 x MACs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(*args)
    root = type(net).__name__
    inclusive = {}
    for key, counts in fc.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(root) + 1:] if key.startswith(root + ".") else ("" if key == root else key)
        inclusive[name] = int(sum(counts.values()))
    own = dict(inclusive)
    for name, total in inclusive.items():  # subtract from the nearest counted ancestor (a ModuleList is never called)
        up = _parent(name)
        while up is not None and up not in inclusive:
            up = _parent(up)
        if up is not None:
            own[up] -= total
    return {k or TOP_LEVEL: v for k, v in own.items() if v > 0}


def _parent(name: str) -> str | None:
    return name.rsplit(".", 1)[0] if "." in name else ("" if name else None)


# =========================================================================== the whole profile
def profile_run(run_dir, batch_size: int = 8, threads: int | None = None, backends=BACKENDS, reps: int = 20,
                peak=None, out_dir=None, wait: str = "spin", top: int = 10) -> dict:
    """Profile one exported run; writes OUT/profile.json and OUT/profile.md (OUT default: RUN) and
    returns the document."""
    import os

    import torch

    from exports.onnx_export import graph_specs
    from harness.bench.backends import REGISTRY, example_inputs
    from harness.bench.backend_base import INPUT_NAMES
    from harness.bench.device import Device
    from harness.run_folder import load_run, onnx_path

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    unknown = [b for b in backends if b not in PROFILABLE]
    if unknown:
        raise UserError(f"segvae profile: cannot profile {unknown}: expected CPU backends among "
                        f"{', '.join(PROFILABLE)}")
    threads = threads or os.cpu_count() or 1
    # as the bench's torch workers: glibc keeps freed memory, so eager's large activations are not mapped
    # and unmapped (page faults) on every call; ORT keeps its own arena and is unaffected
    malloc = retain_freed_memory()
    peaks = load_peak(peak)
    cfg, model = load_run(run_dir)
    torch.set_num_threads(threads)
    net = graph_specs(cfg, model, fold_batchnorm=True)[0].module.eval()
    inputs = example_inputs(cfg, batch_size)
    args = [torch.from_numpy(inputs[k]) for k in INPUT_NAMES[cfg.task]]
    flops = module_flops(net, args)
    spinning = wait == "spin"
    job = {"run_dir": str(run_dir), "task": cfg.task,
           "onnx": {p: {"path": str(onnx_path(run_dir, cfg.task, p))} for p in ("fp32", "int8")}}
    export = _export_json(run_dir)
    per_backend: dict[str, dict] = {}
    for name in backends:
        cls = REGISTRY[name]
        print(f"[profile] {run_dir.name} | {name}: batch {batch_size}, {threads} threads, {reps} runs "
              "profiled, each beside an unprofiled run of the bench's own call", flush=True)
        path = onnx_path(run_dir, cfg.task, cls.onnx_key())
        if cls.family == "ort" and not path.is_file():
            raise UserError(f"{path} not found (run `segvae export {run_dir}"
                            f"{' --quantize int8' if cls.onnx_key() == 'int8' else ''}` first)")
        backend = cls(spinning=spinning) if cls.family == "ort" else cls()
        backend.load(job, threads, Device("cpu", None))
        try:
            run = backend.bind(inputs)
            if cls.family == "ort":
                got, plain = ort_layers(path, {k: inputs[k] for k in INPUT_NAMES[cfg.task]}, threads, reps,
                                        spinning, run)
            else:
                layers, plain = torch_layers(backend.net, run, reps)
                got = {"layers": layers, "nodes": None}
        finally:
            backend.close()
        latency = statistics.median(plain)
        total = sum(got["layers"].values())
        if not 0.9 <= total / latency <= 1.1:
            print(f"[profile] note: {name}'s layers add up to {total:.3f} ms, its bench latency is {latency:.3f} ms "
                  f"({total / latency:.2f}x): the profiler's own cost per node or layer (a small model at a "
                  "small batch), or a busy machine (the bench's own median is the figure to quote)", flush=True)
        per_backend[name] = {"precision": cls.precision, "layers_ms": got["layers"], "nodes": got["nodes"],
                             "sum_ms": total, "bench_latency_ms": latency, "sum_vs_latency": total / latency}
    rows = _rows(per_backend, flops, peaks, export)
    doc = {"run": run_dir.name, "experiment": cfg.name, "task": cfg.task, "batch_size": batch_size,
           "threads": threads, "reps": reps, "wait": wait, "malloc": malloc, "peak_gops": peaks, "cpu": _cpu(),
           "backends": {k: {kk: vv for kk, vv in v.items() if kk != "layers_ms"} for k, v in per_backend.items()},
           "layers": rows, "fp32_in_int8": _fp32_in_int8(per_backend.get("ort-int8")),
           "int8_errors_from": "export.json int8.layer_errors" if export.get("layer_errors") else None,
           "method": __doc__.split("\n\n", 1)[1].strip()}
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PROFILE_JSON, doc)
    atomic_write_text(out / PROFILE_MD, format_markdown(doc, top))
    print(format_markdown(doc, top), flush=True)
    print(f"[profile] written: {out / PROFILE_JSON} and {out / PROFILE_MD}", flush=True)
    return doc


def _export_json(run_dir: Path) -> dict:
    path = run_dir / "onnx" / "export.json"
    if not path.is_file():
        return {}
    doc = read_json(path, "export.json")
    return (doc.get("int8") or {}) if isinstance(doc, dict) else {}


def _cpu() -> dict:
    from harness.hardware import machine

    m = machine(with_gpu=False)
    return {"model": m.cpu_model, "flags": m.cpu_flags}


def _rows(per_backend: dict, flops: dict, peaks: dict | None, int8: dict) -> list[dict]:
    worst: dict[str, dict] = {}
    for e in int8.get("layer_errors") or []:
        m = e.get("module") or TOP_LEVEL
        if m not in worst or e["added"] > worst[m]["added"]:
            worst[m] = e
    names = set(flops)
    for b in per_backend.values():
        names |= set(b["layers_ms"])
    rows = []
    for m in names:
        row = {"module": m, "gflop": flops.get(m, 0) / 1e9, "backends": {}}
        for name, b in per_backend.items():
            ms = b["layers_ms"].get(m)
            if ms is None:
                continue
            prec = b["precision"]
            if b["nodes"] is not None and prec == "int8":  # what the module's nodes ran in
                kinds = {n["precision"] for n in b["nodes"] if n["module"] == m and n["precision"]}
                prec = "int8" if kinds == {"int8"} else ("fp32" if kinds == {"fp32"} else ("mixed" if kinds else None))
            gops = flops.get(m, 0) / (ms / 1e3) / 1e9 if ms > 0 and flops.get(m) else None
            peak = (peaks or {}).get(prec if prec in ("int8", "bf16", "fp16") else "fp32")  # mixed: fp32's
            row["backends"][name] = {"ms": ms, "share": ms / b["sum_ms"] if b["sum_ms"] else None,
                                     "precision": prec, "gops": gops,
                                     "of_peak": gops / peak if gops and peak else None}
        if m in worst:
            w = worst[m]
            row["int8_error"] = {"node": w["node"], "op": w["op"], "added": w["added"], "err_out": w["err_out"],
                                 "sqnr_db": w.get("sqnr_db")}
        rows.append(row)
    rows.sort(key=lambda r: -max((v["ms"] for v in r["backends"].values()), default=0))
    return rows


def _fp32_in_int8(b: dict | None) -> list[dict]:
    """Nodes of the int8 graph that still compute in float, by module (time included)."""
    if not b or not b["nodes"]:
        return []
    out: dict[tuple, dict] = {}
    for n in b["nodes"]:
        if n["precision"] == "fp32":
            r = out.setdefault((n["module"], n["op"]), {"module": n["module"], "op": n["op"], "nodes": 0, "ms": 0.0})
            r["nodes"] += 1
            r["ms"] += n["ms"]
    return sorted(out.values(), key=lambda r: -r["ms"])


# =========================================================================== Markdown
def _f(v, d=2, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.{d}f}%" if pct else f"{v:.{d}f}"


def profile_tables(doc: dict, top: int = 10) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, columns, rows) of a profile document: the one table builder behind profile.md and the
    report's section."""
    names = list(doc["backends"])
    out = [("Per-layer sums against the bench's latency", ["backend", "sum of layers ms", "bench latency ms",
                                                           "sum / latency"],
            [[n, _f(b["sum_ms"], 3), _f(b["bench_latency_ms"], 3), _f(b["sum_vs_latency"], 3)]
             for n, b in doc["backends"].items()])]
    head = ["layer", "GFLOP"] + [f"{n} ms (share)" for n in names] + [f"{n} GOP/s (% peak)" for n in names] + \
        ["int8 graph runs it in", "int8 added error (node)"]
    rows = []
    for r in doc["layers"][:top]:
        b = r["backends"]
        cells = [r["module"], _f(r["gflop"], 3)]
        cells += [f"{_f(b[n]['ms'], 3)} ({_f(b[n]['share'], 1, True)})" if n in b else "-" for n in names]
        cells += [f"{_f(b[n]['gops'], 1)} ({_f(b[n]['of_peak'], 1, True)})" if n in b else "-" for n in names]
        cells.append((b.get("ort-int8") or {}).get("precision") or "-")
        e = r.get("int8_error")
        cells.append(f"{e['added']:+.4f} ({e['node']})" if e else "-")
        rows.append(cells)
    out.append((f"Top {top} layers by time", head, rows))
    left = doc.get("fp32_in_int8") or []
    out.append(("fp32 compute left in the int8 graph", ["layer", "op", "nodes", "ms"],
                [[r["module"], r["op"], str(r["nodes"]), _f(r["ms"], 3)] for r in left]))
    errs = sorted((r for r in doc["layers"] if r.get("int8_error")), key=lambda r: -r["int8_error"]["added"])
    out.append(("int8 error by layer, most harmful first (exports/layer_error.py)",
                ["layer", "node", "op", "added rel. error", "output rel. error", "SQNR dB"],
                [[r["module"], r["int8_error"]["node"], r["int8_error"]["op"], f"{r['int8_error']['added']:+.4f}",
                  f"{r['int8_error']['err_out']:.4f}", _f(r["int8_error"].get("sqnr_db"), 1)] for r in errs[:top]]))
    return out


def profile_intro(doc: dict) -> str:
    cpu = doc.get("cpu") or {}
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in (doc.get("peak_gops") or {}).items() if v) or "not given"
    return (f"{doc['run']} ({doc['experiment']}), batch {doc['batch_size']}, {doc['threads']} thread(s), "
            f"{doc['reps']} profiled runs per backend; CPU {cpu.get('model')} (flags: "
            f"{', '.join(cpu.get('flags') or []) or 'none of interest'}); peak GOP/s: {peaks}.")


def format_markdown(doc: dict, top: int = 10) -> str:
    lines = [f"# Per-layer profile: {doc['run']}", "", profile_intro(doc), ""]
    for title, columns, rows in profile_tables(doc, top):
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["None.", ""]
            continue
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines)
