"""From the workers' replies (gathered over ranks) to bench.json records: accuracy figures and
gate per (run, backend), then one record per measurement (records.build_record)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

from harness.bench import accuracy, records
from harness.bench.backends import REGISTRY
from harness.bench.config import REFERENCE
from harness.bench.scenarios import SCENARIOS
from harness.bench.trackers import sha256
from harness.hardware import NATIVE, backend_status
from harness.run_folder import WEIGHTS_FILE


def _judge_for(judge_fn, job: dict):
    if judge_fn is None:
        return None
    if isinstance(judge_fn, Mapping):
        return judge_fn.get(job["experiment"]) or judge_fn.get(job["dataset"])
    return judge_fn


def _peak_for(ctx, name: str) -> float | None:
    """The probe's peak for the backend's precision, only where that precision is native here: a
    "% of peak" against an emulated peak (11,253% for ORT int8 on an AVX2-only CPU) says nothing."""
    cls = REGISTRY[name]
    if getattr(cls, "gpu", False) or ctx.device.kind != "cpu" or ctx.peak is None:
        return None  # a CPU matmul probe says nothing about a GPU
    if backend_status(ctx.host, cls, ctx.device.kind)[0] != NATIVE:
        return None
    entry = ctx.peak.get(cls.precision) or {}
    return entry.get("gflops_per_s") if entry.get("status", NATIVE) == NATIVE else None


def _base(ctx, job: dict, name: str, ranks: list[dict], acc: dict, gate: dict) -> dict:
    cls = REGISTRY[name]
    status, why = backend_status(ctx.host, cls, ctx.device.kind)
    load = ranks[0]["load"]
    if getattr(cls, "runs_onnx", False):
        f = job["onnx"][cls.onnx_key()]
        model_file, sha = f["path"], f["sha256"]
    else:
        model_file = str(Path(job["run_dir"]) / WEIGHTS_FILE)
        sha = sha256(model_file)
    finish = [r["finish"] for r in ranks]
    return {
        "run": job["run"], "experiment": job["experiment"], "task": job["task"], "backend": name,
        "precision": cls.precision, "precision_status": status, "precision_why": why,
        "flops_per_sample": job["flops_per_sample"],
        "peak_rss_mb": finish[0]["peak_rss_mb"], "peak_rss_serving_mb": finish[0].get("peak_rss_serving_mb"),
        "accuracy_inputs_mb": finish[0].get("accuracy_inputs_mb"), "torch_in_process": finish[0]["torch_imported"],
        "model_bytes": load["model_bytes"], "model_file": model_file, "model_sha256": sha,
        "export_config_hash": job["export_config_hash"] if getattr(cls, "runs_onnx", False) else None,
        "run_config_hash": job["run_config_hash"], "threads": ctx.threads, "isolated": ctx.isolated,
        "device": "cpu" if getattr(cls, "runs_onnx", False) and not getattr(cls, "gpu", False) else str(ctx.device),
        "form": load["form"], "graph_rewrites": load.get("graph_rewrites"), "_compile": load["compile_s"], "worker_pids": load.get("pids"),
        **{k: v for k, v in acc.items() if not k.startswith("_")},
        "accuracy_subset": job["subset"], "accuracy_pass": gate["pass"], "accuracy_gate": gate,
        "world_size": ctx.dist.world,
    }


def _aggregate(per_rank_rounds: list[list[dict]]) -> list[dict]:
    """Round r of the whole job: throughput summed over ranks (each rank's samples / its duration),
    latencies pooled; expressed as samples over the longest rank's duration."""
    out = []
    for rs in zip(*per_rank_rounds):
        dur = max(m["duration_s"] for m in rs)
        sps = sum(m["samples"] / m["duration_s"] for m in rs if m["duration_s"] > 0)
        out.append({"samples": sps * dur, "duration_s": dur, "latencies_s": [x for m in rs for x in m["latencies_s"]],
                    "extra": {}, "h2d_ms": rs[0].get("h2d_ms")})
    return out


def _run_records(ctx, job: dict, per_rank: list[dict]) -> list[dict]:
    """Records of one run. per_rank: each rank's {backend: data} for this run."""
    folder, judge = Path(job["dir"]), _judge_for(ctx.judge_fn, job)
    ref_ranks = [p.get(REFERENCE) for p in per_rank]
    ref = None
    if all(r and not r["error"] and r.get("acc") for r in ref_ranks):
        ref = accuracy.figures(job["task"], [r["acc"] for r in ref_ranks], folder, None, judge)
    ref_rounds = (per_rank[0].get(REFERENCE) or {}).get("rounds", {})
    ran = ctx.schedule.get(job["run"]) or ctx.schedule.get("A/B")
    cfg = replace(ctx.cfg, rounds=len(ran)) if ran else ctx.cfg  # stable = every round the schedule ran
    out = []
    for name in ctx.names:
        ranks = [p[name] for p in per_rank]
        err = next((r["error"] for r in ranks if r["error"]), None)
        if err or ref is None:
            ctx.skipped[f"{job['run']}/{name}"] = err or f"no accuracy reference ({REFERENCE} failed on this run)"
            continue
        acc = accuracy.figures(job["task"], [r["acc"] for r in ranks], folder, None if name == REFERENCE else ref, judge)
        acc["dice_delta"] = None if acc["dice"] is None else acc["dice"] - ref["dice"]
        gate = accuracy.gate(job["task"], acc, ref, ctx.cfg.accuracy_target, seed=ctx.cfg.seed)
        base = _base(ctx, job, name, ranks, acc, gate)
        compile_map = base.pop("_compile")
        for key, rounds in ranks[0]["rounds"].items():
            scen, bs = key.split("|")[0], int(key.split("|")[1])
            ref_fig = records.round_figures(ref_rounds[key]) if ref_rounds.get(key) else None
            variants = [(None, rounds, 1)]
            if ctx.dist.world > 1 and SCENARIOS[scen].all_ranks:
                rank_rounds = [r["rounds"][key] for r in ranks]
                variants = [(i, rr, 1) for i, rr in enumerate(rank_rounds)] + [(None, _aggregate(rank_rounds), len(ranks))]
                ref_fig = records.round_figures(_aggregate([p[REFERENCE]["rounds"][key] for p in per_rank])) \
                    if ref_fig is not None else None
            for rank, rr, n_proc in variants:
                rec = records.build_record(base, scen, bs, rr, cfg, ref_fig, ranks[0]["search"] if SCENARIOS[scen].paced
                                           else None, rank=rank, peak_g=_peak_for(ctx, name), n_proc=n_proc)
                rec["compile_s"] = compile_map.get(str(bs))
                out.append(rec)
    return out


def assemble(ctx, jobs: list[dict], gathered: list[list[dict]]) -> list[dict]:
    """gathered[rank][run index] = {backend: {"error", "load", "acc", "rounds", "search", "finish"}}."""
    out = []
    for j, job in enumerate(jobs):
        out.extend(_run_records(ctx, job, [g[j] for g in gathered]))
    order = {n: i for i, n in enumerate(ctx.names)}
    scen = {name: i for i, name in enumerate(SCENARIOS)}
    run_order = {job["run"]: i for i, job in enumerate(jobs)}
    out.sort(key=lambda r: (run_order[r["run"]], order[r["backend"]], scen[r["scenario"]], r["batch_size"],
                            -1 if r["rank"] is None else r["rank"]))
    return [{k: r.get(k) for k in records.RECORD_FIELDS} | {k: r[k] for k in records.SERVER_FIELDS if k in r}
            for r in out]
