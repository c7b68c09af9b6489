"""`segvae compare OLD.json NEW.json`: a yes/no regression answer from two bench.json files.

Speed, per (experiment, backend, scenario, batch size) in both files: "slower" when NEW is worse
than OLD by more than `max_slowdown` (relative) AND the two 95% intervals do not overlap (schema
v2); "faster" the same way round; else "no significant change". Without intervals (schema v1) the
threshold alone decides, and the output says so. Throughput (samples/s) is compared for the
single-stream and offline scenarios, p99 latency for server (its throughput is the offered rate).
Accuracy, per (experiment, backend): fail when it dropped by more than `max_accuracy_drop`
(absolute, e.g. Dice 0.80 -> 0.79 is a drop of 0.01). A regression is any "slower" or failed row.
When torch eager itself is slower or faster on the same weights (same `model_sha256` in both files),
every row of that (experiment, scenario, batch size) says so: the machine, its load or the bench
changed, not only the backend (on the dev VM, one commit benched 15 minutes apart read 12-20% slower
for every backend). The result is a Markdown report fit for a pull-request comment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import bench_fields as bf
from harness.bench.config import REFERENCE
from harness.errors import UserError
from harness.io import atomic_write_text

DEFAULT_MAX_SLOWDOWN = 0.05
DEFAULT_MAX_ACCURACY_DROP = 0.005
SLOWER, FASTER, SAME = "slower", "faster", "no significant change"
METRIC_NAMES = {"samples_per_s": "samples/s", "p50": "p50 ms", "p90": "p90 ms", "p99": "p99 ms"}


def parse_fraction(s: str) -> float:
    """'5%' or '0.05' -> 0.05; a bare number above 1 is refused as ambiguous."""
    text = str(s).strip()
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"expected a share such as 5% or 0.05, got {s!r}") from None
    if not 0 <= v < 1 or (not text.endswith("%") and v > 1):
        raise ValueError(f"expected a share between 0% and 100% (5% or 0.05), got {s!r}")
    return v


@dataclass
class Comparison:
    speed: list[dict] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)
    only_old: list[tuple] = field(default_factory=list)
    only_new: list[tuple] = field(default_factory=list)
    intervals: bool = True          # every speed row had intervals on both sides
    reference_moved: dict = field(default_factory=dict)  # (experiment, scenario, batch) -> eager's (verdict, change, metric)

    @property
    def slower(self) -> list[dict]:
        return [r for r in self.speed if r["verdict"] == SLOWER]

    @property
    def accuracy_failures(self) -> list[dict]:
        return [r for r in self.accuracy if r["verdict"] == "fail"]

    @property
    def regression(self) -> bool:
        return bool(self.slower or self.accuracy_failures)


def speed_metric(rec: dict) -> str:
    return "p99" if rec.get("scenario") == "server" else "samples_per_s"


def judge_speed(old: dict, new: dict, max_slowdown: float) -> dict:
    """One speed row: values, intervals, relative change (NEW/OLD - 1) and the verdict."""
    metric = speed_metric(new)
    o, n = bf.value(old, metric), bf.value(new, metric)
    io, inn = bf.interval(old, metric), bf.interval(new, metric)
    row = {"metric": metric, "old": o, "new": n, "old_ci": io, "new_ci": inn, "change": None,
           "basis": "95% CI" if io and inn else "threshold only", "note": ""}
    bad = [f"{side}: {', '.join(r) or 'invalid'}" for side, rec in (("OLD", old), ("NEW", new))
           for ok, r in [bf.validity(rec)] if ok is False]
    if bad:
        return {**row, "verdict": "not comparable", "note": "invalid measurement (" + "; ".join(bad) + ")"}
    if o is None or n is None or o <= 0:
        return {**row, "verdict": "not measured"}
    change = n / o - 1
    worse = -change if metric == "samples_per_s" else change    # share by which NEW is worse
    apart = True if not (io and inn) else (inn[1] < io[0] or inn[0] > io[1])
    verdict = SAME
    if apart and worse > max_slowdown:
        verdict = SLOWER
    elif apart and -worse > max_slowdown:
        verdict = FASTER
    elif not apart and abs(worse) > max_slowdown:
        row["note"] = "intervals overlap"
    return {**row, "change": change, "verdict": verdict}


def judge_accuracy(old: dict, new: dict, old_doc: dict, new_doc: dict, max_drop: float) -> dict:
    ao, an = bf.accuracy(old, old_doc), bf.accuracy(new, new_doc)
    row = {"metric": an["metric"] or ao["metric"], "old": ao["value"], "new": an["value"],
           "old_count": ao["count"], "new_count": an["count"], "drop": None, "note": ""}
    if an["pass"] is False:
        row["note"] = "NEW fails its own accuracy gate vs the fp32 reference"
    if ao["value"] is None or an["value"] is None:
        return {**row, "verdict": "not measured"}
    drop = ao["value"] - an["value"]
    return {**row, "drop": drop, "verdict": "fail" if drop > max_drop + 1e-12 else "pass"}


def _index(doc: dict, path) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for rec in bf.whole_job(doc):
        k = bf.key(rec)
        if k in out:  # two runs of one experiment in one file: tell them apart by run name
            raise UserError(f"{path}: two records for {k} (runs {out[k].get('run')!r} and {rec.get('run')!r}); "
                            f"bench one run per experiment to compare")
        out[k] = rec
    return out


def compare(old_doc: dict, new_doc: dict, max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
            max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, old_name: str = "OLD",
            new_name: str = "NEW") -> Comparison:
    old, new = _index(old_doc, old_name), _index(new_doc, new_name)
    common = [k for k in new if k in old]
    if not common:
        raise UserError(f"{old_name} and {new_name} have no (experiment, backend, scenario, batch size) in "
                        f"common: nothing to compare")
    c = Comparison(only_old=sorted(k for k in old if k not in new), only_new=sorted(k for k in new if k not in old))
    seen_acc = set()
    for k in sorted(common):
        row = judge_speed(old[k], new[k], max_slowdown)
        c.speed.append({"key": k, **row})
        c.intervals &= row["basis"] == "95% CI"
        if k[:2] not in seen_acc:  # accuracy is per (experiment, backend), repeated on its records
            seen_acc.add(k[:2])
            c.accuracy.append({"key": k[:2], **judge_accuracy(old[k], new[k], old_doc, new_doc, max_accuracy_drop)})
    _mark_reference_moves(c, old, new)
    return c


def _mark_reference_moves(c: Comparison, old: dict, new: dict) -> None:
    """torch eager (the reference) significantly slower or faster on identical weights: note it on
    every row of its (experiment, scenario, batch size), so a reader does not blame the backend."""
    for row in c.speed:
        exp, backend, scen, bs = row["key"]
        sha = old[row["key"]].get("model_sha256")
        if backend == REFERENCE and row["verdict"] in (SLOWER, FASTER) and sha and sha == new[row["key"]].get("model_sha256"):
            c.reference_moved[(exp, scen, bs)] = (row["verdict"], row["change"], row["metric"])
    for row in c.speed:
        exp, backend, scen, bs = row["key"]
        if (exp, scen, bs) in c.reference_moved:
            verdict, change, metric = c.reference_moved[(exp, scen, bs)]
            who = f"{REFERENCE} itself" if backend == REFERENCE else REFERENCE
            said = (f"{who} was {verdict} ({METRIC_NAMES[metric]} {100 * change:+.1f}%) on the same weights: "
                    "the machine, its load or the bench changed")
            row["note"] = "; ".join(filter(None, [row["note"], said]))


# ----------------------------------------------------------------------------- markdown
def _fmt(v, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _with_ci(v, ci, digits: int) -> str:
    s = _fmt(v, digits)
    return s if ci is None else f"{s} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _table(columns: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def _speed_rows(c: Comparison) -> list[list]:
    rows = []
    order = {SLOWER: 0, FASTER: 1}  # regressions first: what a reviewer reads
    for r in sorted(c.speed, key=lambda r: order.get(r["verdict"], 2)):
        d = 1 if r["metric"] == "samples_per_s" else 2
        verdict = f"**{r['verdict']}**" if r["verdict"] in (SLOWER, FASTER) else r["verdict"]
        change = "—" if r["change"] is None else f"{100 * r['change']:+.1f}%"
        rows.append([*r["key"], METRIC_NAMES[r["metric"]], _with_ci(r["old"], r["old_ci"], d),
                     _with_ci(r["new"], r["new_ci"], d), change, verdict, r["note"] or r["basis"]])
    return rows


def _accuracy_rows(c: Comparison) -> list[list]:
    rows = []
    for r in sorted(c.accuracy, key=lambda r: r["verdict"] != "fail"):
        n = " / ".join("—" if x is None else str(x) for x in (r["old_count"], r["new_count"]))
        verdict = "**fail**" if r["verdict"] == "fail" else r["verdict"]
        rows.append([*r["key"], r["metric"] or "—", _fmt(r["old"], 4), _fmt(r["new"], 4),
                     "—" if r["drop"] is None else f"{0.0 - r['drop']:+.4f}", n, verdict, r["note"]])
    return rows


def to_markdown(c: Comparison, old_name: str, new_name: str, max_slowdown: float, max_drop: float) -> str:
    head = "REGRESSION" if c.regression else "no regression"
    parts = [f"{len(c.slower)} slower", f"{len(c.accuracy_failures)} accuracy failure(s)",
             f"{sum(r['verdict'] == FASTER for r in c.speed)} faster"]
    out = [f"## Benchmark comparison: {head}", "",
           f"`{_cell(old_name)}` (OLD) vs `{_cell(new_name)}` (NEW): {', '.join(parts)}, "
           f"{len(c.speed)} configuration(s) compared.", "",
           f"A row is **slower** when NEW is worse than OLD by more than {100 * max_slowdown:g}% and the two "
           f"95% confidence intervals do not overlap; **faster** the other way round."]
    no_ci = sum(r["basis"] != "95% CI" for r in c.speed)
    if no_ci:
        which = "No row" if no_ci == len(c.speed) else f"{no_ci} row(s) (basis \"threshold only\")"
        out[-1] += (f" {which} had intervals on both sides (bench.json schema v1 has none): there the "
                    f"{100 * max_slowdown:g}% threshold alone decides.")
    if c.reference_moved:
        out += ["", f"**{REFERENCE} moved on unchanged weights** in {len(c.reference_moved)} configuration(s): the "
                    f"machine, its load or the bench differ between the files, so those rows' verdicts are not the "
                    f"backends' alone (their notes say so). Bench both commits back to back on one machine to tell."]
    out += ["", "### Speed", ""]
    out += _table(["experiment", "backend", "scenario", "batch", "metric", "OLD [95% CI]", "NEW [95% CI]",
                   "change", "verdict", "basis / note"], _speed_rows(c))
    out += ["", f"### Accuracy (higher is better; fail = a drop of more than {max_drop:g})", ""]
    out += _table(["experiment", "backend", "metric", "OLD", "NEW", "change", "samples (OLD / NEW)",
                   "verdict", "note"], _accuracy_rows(c))
    for side, keys in (("OLD", c.only_old), ("NEW", c.only_new)):
        if keys:
            out += ["", f"Only in {side} (not compared): " + "; ".join(" / ".join(map(str, k)) for k in keys)]
    return "\n".join(out) + "\n"


def run_compare(old_path, new_path, max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
                max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, out: str | Path | None = None) -> int:
    """Print (and with `out`, write) the Markdown report; 1 on a regression, else 0."""

    old_doc, new_doc = bf.load(old_path, "OLD bench results"), bf.load(new_path, "NEW bench results")
    c = compare(old_doc, new_doc, max_slowdown, max_accuracy_drop, str(old_path), str(new_path))
    md = to_markdown(c, str(old_path), str(new_path), max_slowdown, max_accuracy_drop)
    print(md, end="", flush=True)
    if out is not None:
        atomic_write_text(out, md)
    return 1 if c.regression else 0
