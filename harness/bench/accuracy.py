"""Accuracy side of the bench: which test samples (whole split, or a class-stratified seeded
subset), the per-backend figures from the workers' outputs, and the MLPerf-style gate
(exports.accuracy_gate: metric >= target x the fp32 torch-eager reference) with its margin (a paired
per-image bootstrap interval of that ratio; `marginal` when it straddles the target)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exports.accuracy_gate import accuracy_gate, mae_gate, paired_bootstrap_ratio, with_margin
from harness.data import build_splits, class_labels, stratified_indices
from harness.errors import UserError
from harness.labelswap import swap_inputs
from harness.metrics import seg_metrics, seg_stats


def prepare_inputs(cfg, data_root, n_samples: int | None, seed: int, folder: Path) -> dict:
    """Write the accuracy/timing inputs of one run as .npy files in `folder`; returns
    {"n", "class_counts", "subset"} (subset: "whole test split" or how it was drawn)."""
    import torch

    test = build_splits(cfg, data_root)["test"]
    if len(test) == 0:
        raise UserError(f"the test split of {data_root or 'the embedded sample'} is empty")
    labels = class_labels(test)
    idx = stratified_indices(labels, n_samples, seed)
    if cfg.task == "segmentation":
        items = [test[int(i)] for i in idx]
        arrays = {"image": torch.stack([x for x, _ in items]).numpy(), "mask": torch.stack([m for _, m in items]).numpy()}
    else:
        sub = test.subset(torch.as_tensor(idx))
        s = swap_inputs(sub, n=len(sub), num_classes=cfg.num_classes, latent_dim=int(cfg.model["latent_dim"]),
                        seed=seed, spread=False)
        arrays = {k: v.numpy() for k, v in s.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(folder / f"{k}.npy", np.ascontiguousarray(v))
    _, counts = np.unique(labels[idx], return_counts=True)
    whole = len(idx) == len(test)
    return {"n": int(len(idx)), "class_counts": [int(c) for c in counts],
            "subset": "whole test split" if whole else f"class-stratified subset of {len(test)} (seed {seed})"}


def _load_outputs(parts: list[dict]) -> np.ndarray:
    return np.concatenate([np.load(p["outputs"], allow_pickle=False) for p in parts if p.get("outputs")])


def figures(task: str, parts: list[dict], folder: Path, ref: dict | None, judge) -> dict:
    """Accuracy figures of one (run, backend) from its ranks' `accuracy` replies; ref = the
    reference backend's figures (None for the reference itself). Keys starting with '_' stay private."""
    acc = {k: None for k in ("dice", "iou", "max_abs_err", "mean_abs_err", "judge_acc")}
    out = _load_outputs(parts)
    acc["accuracy_count"] = int(out.shape[0])
    if task == "segmentation":
        import torch

        masks = np.load(folder / "mask.npy", allow_pickle=False)
        per_image = seg_stats(torch.from_numpy(out.astype(np.float32) - 0.5), torch.from_numpy(masks))
        m = seg_metrics(per_image)
        acc["dice"], acc["iou"] = m["dice"], m["iou"]
        inter, pred, target = per_image[:, 0].numpy(), per_image[:, 1].numpy(), per_image[:, 2].numpy()
        acc["_parts"] = np.stack([2 * inter, pred + target], axis=1)  # dataset Dice = sum / sum
        return acc
    acc["_outputs"] = out
    base = out if ref is None else ref["_outputs"]
    diff = np.abs(out.astype(np.float64) - base.astype(np.float64))
    acc["max_abs_err"], acc["mean_abs_err"] = float(diff.max()), float(diff.mean())
    if judge is not None:
        try:
            hits = judge_hits(judge, out, np.load(folder / "new_label.npy", allow_pickle=False))
            if hits is None:
                acc["judge_acc"] = float(judge(out, np.load(folder / "new_label.npy", allow_pickle=False)))
            else:
                acc["judge_acc"] = float(hits.mean())
                acc["_parts"] = np.stack([hits, np.ones_like(hits)], axis=1)
        except Exception as e:  # a broken judge must not cost the whole bench; the gate says so
            acc["_judge_error"] = f"{type(e).__name__}: {e}"
            print(f"[bench] judge failed: {acc['_judge_error']}", flush=True)
    return acc


def judge_hits(judge, images: np.ndarray, new_labels: np.ndarray) -> np.ndarray | None:
    """Per-image 0/1 label-swap successes when the judge can say them (it, or the object its bound
    `score` belongs to, has `predict(images) -> classes`); None for a judge that returns a share only."""
    predict = getattr(judge, "predict", None) or getattr(getattr(judge, "__self__", None), "predict", None)
    if predict is None:
        return None
    pred = np.asarray(predict(images)).reshape(-1)
    return (pred == np.asarray(new_labels).reshape(-1)).astype(np.float64)


def gate(task: str, acc: dict, ref: dict, target: float, seed: int = 0) -> dict:
    """exports.accuracy_gate on the task's metric, with the metric named in the result, and its
    margin: the paired per-image bootstrap interval of the ratio (seeded) and `marginal` when that
    interval straddles the target (no interval without per-image figures: MAE-only gates)."""
    g = _gate(task, acc, ref, target)
    parts, ref_parts = acc.get("_parts"), ref.get("_parts")
    interval = None
    if g.get("ratio") is not None and parts is not None and ref_parts is not None:
        interval = paired_bootstrap_ratio(parts, ref_parts, seed=seed)
    return with_margin(g, interval)


def _gate(task: str, acc: dict, ref: dict, target: float) -> dict:
    if task == "segmentation":
        g = accuracy_gate(acc["dice"], ref["dice"], target)
        g["metric"] = "dice"
    elif acc.get("judge_acc") is not None and ref.get("judge_acc") is not None:
        g = accuracy_gate(acc["judge_acc"], ref["judge_acc"], target, mae=acc["mean_abs_err"])
        g["metric"] = "judge label-swap success + MAE vs fp32"
    else:  # no judge: the output error alone decides, and the record says so
        g = mae_gate(acc["mean_abs_err"], target)
        why = acc.get("_judge_error") or ref.get("_judge_error")
        g["metric"] = f"MAE vs fp32 only ({'judge failed: ' + why if why else 'no judge given'})"
    return g
