"""`segvae ab OLD_RUN NEW_RUN [NEW_RUN ...]`: two versions of a model benched in ONE session, a
regression verdict a CI can act on.

What it compares: the files in each exported run folder, i.e. the ONNX graphs (ORT backends) and
the weights (torch backends). The torch backends build the model from the CURRENT checkout's code
and load each side's weights, so a change to the PyTorch model code itself is not A/B'd (bench
the two commits' checkouts for that).

How: one worker process per (side, backend), every one of them measured in every round, the order
of all (side, backend) pairs shuffled per round (seeded, recorded in `config.order`), so a slow
minute of the host, or going first in a round, hits both sides alike. Within a round the lanes take
turns every 50 ms or so (`auto_slices`, ABBA order) with idle threads sleeping (`--wait passive`
unless told), so the host's sub-second swings hit both sides too. How many rounds: `--rounds` (12)
is a pilot, after which the session runs as many as the spread of its per-round ratios needs to
catch a `--detect` (5%) slowdown nine times in ten, up to `--max-rounds` (RoundSizer).
Per (backend, scenario, batch size) the per-round ratios NEW/OLD of samples/s give a paired
interval of their median (`stats.paired_ratio_ci`, labelled with its true coverage). Verdict:

  slower     the whole interval below 1 (a real difference) AND the median more than
             `max_slowdown` below 1 (a difference worth failing for)
  faster     the mirror image
  no change  otherwise

Both conditions matter: the interval alone would fail on 1% differences between two processes
running identical graphs; the threshold alone would call noise a regression. Accuracy is gated in
the same run: every NEW backend must pass its own gate against NEW's fp32 (torch eager) and lose no
more than `max_accuracy_drop` of the metric against the same backend on OLD. Exit 1 on any
slower row, failed accuracy or a backend that OLD has and NEW lost; 0 otherwise; 2 on bad input.
The gate's own error rates on this machine: docs/results/ab-gate/ (scripts/ab_error_rates.py).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from harness.bench import records, stats
from harness.bench.config import BenchConfig
from harness.errors import UserError

DEFAULT_MAX_SLOWDOWN = 0.02
DEFAULT_MAX_ACCURACY_DROP = 0.005
DEFAULT_DETECT = 0.05       # the slowdown the session is sized to catch (with POWER)
DEFAULT_MAX_ROUNDS = 60
SLICE_S = 0.05              # the A/B mode alternates the lanes about every 50 ms (auto_slices)
POWER_Z = 1.2816            # 90% power
SLOWER, FASTER, SAME, CANNOT = "slower", "faster", "no change", "cannot verify"
COMPARES = ("compares the ONNX graphs and the weights in the run folders; the torch backends run the current "
            "checkout's model code with each side's weights")


def side_labels(n: int) -> list[str]:
    """OLD, NEW for two runs; OLD, NEW1, NEW2, ... for more (every NEW judged against OLD)."""
    if n < 2:
        raise UserError(f"the A/B mode needs at least two run folders (OLD NEW), got {n}")
    return ["OLD", "NEW"] if n == 2 else ["OLD", *(f"NEW{i}" for i in range(1, n))]


def _check_comparable(run_dirs: list[Path]) -> None:
    """Same task, dataset and image size on every side: the same inputs feed both, so their
    accuracy and their speed are comparable at all."""
    from harness.run_folder import load_config

    cfgs = [load_config(r) for r in run_dirs]
    for r, c in zip(run_dirs[1:], cfgs[1:]):
        for what in ("task", "dataset", "image_size"):
            a, b = getattr(cfgs[0], what, None), getattr(c, what, None)
            if a != b:
                raise UserError(f"{r} is not comparable with {run_dirs[0]}: {what} {b!r} against {a!r} "
                                f"(A/B needs the same task, dataset and input size on every side)")


def _upper_end(sigma: float, n: int) -> float:
    """Where the paired interval's upper end lies above the true log ratio for n normal rounds, plus
    1.28 of its standard errors (90% power): the interval is [x_(k), x_(n+1-k)] (stats.median_ci),
    and x_(n+1-k) estimates the data's quantile p = (n+1-k)/(n+1), sigma Phi^-1(p) above the centre,
    with a standard error of sigma sqrt(p (1-p) / n) / phi(Phi^-1(p))."""
    k, _ = stats.order_k(n)
    p = (n + 1 - k) / (n + 1)
    z = statistics.NormalDist().inv_cdf(p)
    se = math.sqrt(p * (1 - p) / n) / statistics.NormalDist().pdf(z)
    return sigma * (z + POWER_Z * se)


def rounds_for(sigma: float, detect: float, limit: int = 2000) -> int:
    """The fewest rounds (at most `limit`) for which a `detect` slowdown puts the whole paired
    interval below 1 nine times in ten, at a per-round spread `sigma` of the log ratios (normal
    rounds; _upper_end). Up to 200 rounds a scan (the order statistics step unevenly), then bisection."""
    n = stats.MIN_ROUNDS_95
    if sigma <= 0:
        return n
    while n < min(limit, 200):
        if _upper_end(sigma, n) <= detect:
            return n
        n += 1
    return stats.first_true(n, limit, lambda m: _upper_end(sigma, m) <= detect)


def resolvable(sigma: float, rounds: int) -> float:
    """The slowdown `rounds` rounds resolve at that spread (rounds_for's inverse)."""
    return _upper_end(sigma, max(rounds, stats.MIN_ROUNDS_95))


def robust_sigma(values: list[float]) -> float:
    """1.4826 x the median absolute deviation: the spread of normal rounds, deaf to a few wild ones."""
    med = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - med) for v in values)


def round_log_ratios(lanes: dict, sides: list[str]) -> dict[tuple, list[float]]:
    """(NEW side, backend, "scenario|bs") -> per-round log(NEW/OLD samples/s) so far, from the
    runner's lanes ("SIDE/backend" -> BackendRun); rounds paired by index."""
    def sps(m: dict) -> float:
        return m["samples"] / m["duration_s"] if m["duration_s"] > 0 else 0.0
    out = {}
    for key, lane in lanes.items():
        side, backend = key.split("/", 1)
        if side == sides[0] or not lane.live:
            continue
        old = lanes.get(f"{sides[0]}/{backend}")
        if old is None or not old.live:
            continue
        for item, ms in lane.rounds.items():
            pairs = zip(ms, old.rounds.get(item, []))
            out[(side, backend, item)] = [math.log(sps(a) / sps(b)) for a, b in pairs if sps(a) > 0 and sps(b) > 0]
    return out


@dataclass
class RoundSizer:
    """`--rounds` is the pilot; after it (and after every later round) the session asks for the
    rounds its widest row needs to catch a `detect` slowdown (rounds_for, on the robust spread of
    the per-round log ratios so far), never more than max_rounds. What it saw is kept for the record."""
    sides: list[str]
    pilot: int
    detect: float = DEFAULT_DETECT
    max_rounds: int = DEFAULT_MAX_ROUNDS
    sigma: float | None = None
    wanted: int | None = None
    widest: str | None = None

    def __call__(self, lanes: dict, done: int) -> int:
        if done < self.pilot:
            return self.pilot
        rows = {k: v for k, v in round_log_ratios(lanes, self.sides).items() if len(v) >= 3}
        if not rows:
            return done
        key, self.sigma = max(((k, robust_sigma(v)) for k, v in rows.items()), key=lambda kv: kv[1])
        self.widest = "/".join(map(str, key))
        self.wanted = rounds_for(self.sigma, self.detect)
        return max(self.pilot, min(self.max_rounds, self.wanted))

    def record(self, done: int) -> dict:
        return {"rule": f"pilot {self.pilot} rounds, then as many as the widest row's robust spread needs to catch a "
                        f"{100 * self.detect:g}% slowdown 9 times in 10, at most {self.max_rounds}",
                "pilot": self.pilot, "detect": self.detect, "max_rounds": self.max_rounds, "rounds_run": done,
                "sigma_log_ratio": self.sigma, "widest_row": self.widest, "rounds_wanted": self.wanted,
                "resolves": None if self.sigma is None else resolvable(self.sigma, done)}


def auto_slices(cfg: BenchConfig) -> int:
    """Slices per round in the A/B mode: --slices, else one per 50 ms of the round. On a 2-core VM
    the speed of one side swings by 10% and more from one half second to the next (an A/A session's
    per-round ratios spread 14.0% with whole-round turns and spinning threads, 3.3% with 10 turns and
    sleeping ones: docs/results/ab-gate/turns/), so turns far shorter than a round let both sides
    ride the same swings."""
    return cfg.slices or max(1, round(cfg.min_duration / SLICE_S))


def verdict(ratio: dict | None, max_slowdown: float) -> str:
    """slower / faster / no change from the paired NEW/OLD interval of samples/s (see module docstring)."""
    if not ratio:
        return CANNOT
    if ratio["hi"] < 1 and ratio["median"] < 1 - max_slowdown:
        return SLOWER
    if ratio["lo"] > 1 and ratio["median"] > 1 + max_slowdown:
        return FASTER
    return SAME


def ab_rows(results: list[dict], sides: list[str], rounds: int, max_slowdown: float, max_drop: float) -> list[dict]:
    """One row per (NEW side, backend, scenario, batch size) that OLD measured: the paired ratio,
    the speed verdict, and the accuracy verdict of that backend on that side."""
    by = {(r["run"], r["backend"], r["scenario"], r["batch_size"]): r for r in results if r.get("rank") is None}
    rows = []
    for new_side in sides[1:]:
        for (side, backend, scen, bs), old in by.items():
            if side != sides[0]:
                continue
            new = by.get((new_side, backend, scen, bs))
            row = {"side": new_side, "backend": backend, "scenario": scen, "batch_size": bs, "ratio": None,
                   "old_samples_per_s": old["samples_per_s"], "new_samples_per_s": None, "speed": CANNOT,
                   "accuracy": CANNOT, "notes": []}
            if new is None:
                row["notes"].append(f"{backend} ran on OLD but not on {new_side} (see skipped)")
                rows.append(row)
                continue
            row["new_samples_per_s"] = new["samples_per_s"]
            n = min(len(old["rounds_samples_per_s"]), len(new["rounds_samples_per_s"]))
            if n < rounds:
                row["notes"].append(f"only {n} of {rounds} rounds on both sides")
            else:
                row["ratio"] = stats.paired_ratio_ci(new["rounds_samples_per_s"], old["rounds_samples_per_s"])
                row["speed"] = verdict(row["ratio"], max_slowdown)
            row["accuracy"], why = _accuracy(old, new, max_drop)
            row["notes"] += why
            rows.append(row)
    return rows


def _accuracy(old: dict, new: dict, max_drop: float) -> tuple[str, list[str]]:
    from harness import bench_fields as bf

    ao, an = bf.accuracy(old), bf.accuracy(new)
    notes = []
    if an["pass"] is False:
        notes.append("NEW fails its accuracy gate vs its fp32: " + "; ".join(
            (new.get("accuracy_gate") or {}).get("reasons") or ["see accuracy_gate"]))
    if ao["value"] is not None and an["value"] is not None and ao["value"] - an["value"] > max_drop + 1e-12:
        notes.append(f"{an['metric']} {ao['value']:.4f} -> {an['value']:.4f}, a drop of more than {max_drop:g}")
    if notes:
        return "fail", notes
    if an["pass"] is None:
        return CANNOT, ["no accuracy verdict on NEW"]
    return "pass", []


def run_ab(run_dirs, cfg: BenchConfig | None = None, data_root=None, out="ab.json", argv=None, judge_fn=None,
           max_slowdown: float = DEFAULT_MAX_SLOWDOWN, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
           md_out=None, detect: float | None = DEFAULT_DETECT, max_rounds: int = DEFAULT_MAX_ROUNDS
           ) -> tuple[dict, int]:
    """Bench OLD and NEW run folders in the same rounds; write `out` (the bench document plus
    `sides`, `ab` rows and `verdict`), print the Markdown verdict. Returns (document, exit code).
    detect: size the session to catch this slowdown (RoundSizer; cfg.rounds is the pilot); None:
    exactly cfg.rounds rounds."""
    from harness.bench.runner import bench_context, existing_dirs, measure

    cfg = (cfg or BenchConfig()).validate()
    if "server" in cfg.scenarios:
        raise UserError("the A/B mode measures single-stream and offline (a server p99 needs 662 queries per round "
                        "and side); bench server latency with `segvae bench --scenarios server`")
    run_dirs = existing_dirs(run_dirs)
    sides = side_labels(len(run_dirs))
    _check_comparable(run_dirs)
    sizer = None if detect is None else RoundSizer(sides, cfg.rounds, detect, max(max_rounds, cfg.rounds))
    with bench_context(cfg, data_root, judge_fn) as ctx:
        if ctx.dist.world > 1:
            raise UserError("the A/B mode runs in one process tree (not under accelerate launch)")
        ctx.extend_rounds, ctx.slices = sizer, auto_slices(cfg)
        doc = measure(ctx, run_dirs, argv, sides)
    for r in doc["results"]:
        r["side"] = r["run"]
    done = len(doc["config"]["order"]["schedule"]["A/B"])
    doc["config"]["rounds"] = done
    doc["config"]["rounds_sizing"] = sizer.record(done) if sizer else {"rule": f"fixed: {done} rounds"}
    rows = ab_rows(doc["results"], sides, done, max_slowdown, max_accuracy_drop)
    bad = [r for r in rows if r["speed"] in (SLOWER, CANNOT) or r["accuracy"] != "pass"]
    doc.update(kind="ab", compares=COMPARES, sides={s: str(d) for s, d in zip(sides, run_dirs)},
               ab_rule={"max_slowdown": max_slowdown, "max_accuracy_drop": max_accuracy_drop,
                        "slower": "paired NEW/OLD samples/s interval entirely below 1 and its median below "
                                  "1 - max_slowdown; faster: the mirror image"},
               ab=rows, verdict="regression" if bad else "no regression")
    from harness.io import atomic_write_json, atomic_write_text
    path = atomic_write_json(out, doc)
    md = to_markdown(doc)
    print(md, end="", flush=True)
    if md_out is not None:
        atomic_write_text(md_out, md)
    print(str(path), flush=True)
    return doc, 1 if bad else 0


def sizing_text(z: dict) -> str:
    """How many rounds ran and why, and the slowdown that many resolves on this machine."""
    if z.get("sigma_log_ratio") is None:
        return f"Rounds: {z.get('rule', '?')}."
    text = (f"Rounds: {z['rounds_run']} ({z['rule']}); the widest row ({z['widest_row']}) spread its per-round "
            f"log ratios by {100 * z['sigma_log_ratio']:.1f}% (robust sigma), so the session resolves a "
            f"{100 * z['resolves']:.1f}% slowdown 9 times in 10.")
    if z["rounds_wanted"] > z["max_rounds"]:
        text += (f" **This machine is too noisy to catch a {100 * z['detect']:g}% slowdown in {z['max_rounds']} "
                 f"rounds** (it would take {z['rounds_wanted']}): raise --max-rounds or quiet the machine.")
    return text


def _ratio_text(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{r['median']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


def to_markdown(doc: dict) -> str:
    rows, rule = doc["ab"], doc["ab_rule"]
    cov = next((r["ratio"]["coverage"] for r in rows if r["ratio"]), None)
    label = records.coverage_label(cov)
    head = "REGRESSION" if doc["verdict"] == "regression" else "no regression"
    lines = [f"## A/B benchmark, one session: {head}", "",
             "Sides: " + ", ".join(f"{s} = `{d}`" for s, d in doc["sides"].items()) + f". This {doc['compares']}.", "",
             f"Every (side, backend) measured in each of {doc['config']['rounds']} rounds, in an order shuffled per "
             f"round (seed {doc['config']['order']['seed']}), taking turns {doc['config'].get('slices_used', 1)} times "
             f"per round (idle threads {doc['config'].get('wait')}). Ratio = NEW/OLD samples/s per round (above 1: NEW "
             f"faster), median [{label}]. **slower**: the whole interval below 1 and the median more than "
             f"{100 * rule['max_slowdown']:g}% below it. Accuracy: NEW's own gate vs its fp32, and a drop of at most "
             f"{rule['max_accuracy_drop']:g} against OLD.", "", sizing_text(doc["config"].get("rounds_sizing") or {}), "",
             "| side | backend | scenario | batch | OLD samples/s | NEW samples/s | NEW/OLD [" + label + "] | speed | "
             "accuracy | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        speed = f"**{r['speed']}**" if r["speed"] in (SLOWER, FASTER, CANNOT) else r["speed"]
        acc = r["accuracy"] if r["accuracy"] == "pass" else f"**{r['accuracy']}**"
        lines.append(f"| {r['side']} | {r['backend']} | {r['scenario']} | {r['batch_size']} | "
                     f"{fmt(r['old_samples_per_s'])} | {fmt(r['new_samples_per_s'])} | {_ratio_text(r['ratio'])} | "
                     f"{speed} | {acc} | {'; '.join(r['notes']).replace('|', '/')} |")
    for k, v in (doc.get("skipped") or {}).items():
        lines.append(f"\nskipped {k}: {v.splitlines()[0] if v else v}")
    return "\n".join(lines) + "\n"
