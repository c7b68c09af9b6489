"""`segvae compare OLD.json NEW.json`: a yes/no regression answer from two bench.json files of two
sessions.

Speed, per (experiment, backend, scenario, batch size) in both files: "slower" when NEW is worse
than OLD by more than `max_slowdown` (relative) AND the two intervals (each labelled with its own
true coverage) do not overlap; "faster" the same way round; else "no significant change". Without
intervals (schema v1) the threshold alone decides, and the output says so. Throughput (samples/s)
is compared for the single-stream and offline scenarios, p99 latency for server (its throughput is
the offered rate). Accuracy, per (experiment, backend): fail when it dropped by more than
`max_accuracy_drop` (absolute, e.g. Dice 0.80 -> 0.79 is a drop of 0.01).

Nothing passes for want of evidence. Each of these is a regression or "cannot verify" (exit 1)
unless its flag (`Allow`) accepts it: a backend in OLD missing from NEW; a row not `stable` on
either side (a backend that died halfway, too few queries); NEW failing its own accuracy gate
against fp32; a CVAE benched without a judge (only its output error was gated). Server rows are
left out with a printed reason unless both sides measured enough queries for a p99 (662 per round
by default they do not). Two files from different machines or settings (CPU model and flags,
cores, package versions, threads and bench settings) are bad input (exit 2, naming the fields)
unless `allow.different_machine`.

Two sessions are minutes or days apart and the host drifts between them (on the dev VM one commit
benched 15 minutes apart read 12-20% slower for every backend): every speed verdict here says so
and points to `segvae ab`, which measures both versions in the same rounds. When torch eager
itself is slower or faster on the same weights (same `model_sha256` in both files), every row of
that (experiment, scenario, batch size) says so. The result is Markdown fit for a pull-request comment.
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
CANNOT = "cannot verify"
METRIC_NAMES = {"samples_per_s": "samples/s", "p50": "p50 ms", "p90": "p90 ms", "p99": "p99 ms"}
DRIFT = ("these are two sessions, and whatever the host did between them lands in every speed verdict (one commit "
         "benched 15 minutes apart read 12-20% slower on the dev VM); `segvae ab OLD_RUN NEW_RUN` measures both "
         "versions in the same rounds and is the gate to trust")
# what must match for two sessions' figures to be comparable at all: (section, field)
MACHINE_FIELDS = (("env", "cpu_model"), ("env", "cpu_flags"), ("env", "cores_logical"), ("env", "python"),
                  ("env", "torch"), ("env", "onnxruntime"), ("env", "numpy"))
SETTING_FIELDS = tuple(("config", k) for k in (
    "threads", "device_resolved", "world_size", "isolation", "processes_used", "slices_used", "wait", "settle_s_used",
    "ort_opt_level", "rounds",
    "min_queries", "min_duration", "warmup", "mlperf", "accuracy_samples", "accuracy_target"))


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
class Allow:
    """Which missing evidence is accepted instead of failing the comparison (each a CLI flag)."""
    missing: bool = False            # a backend/configuration in OLD absent from NEW
    unstable: bool = False           # a row not stable (our minimum counts) on either side
    gate_fail: bool = False          # NEW failing its own accuracy gate against fp32
    no_judge: bool = False           # a CVAE gated on its output error only (benched without --judges)
    different_machine: bool = False  # machine or bench settings differ between the files


def coverage_label(cov: float | None) -> str:
    """'96.1% CI', '75% CI': an interval named by its own true coverage, never 95% below 95%."""
    from harness.bench.records import coverage_label as label
    return label(cov)


def machine_differences(old_doc: dict, new_doc: dict) -> tuple[list[str], list[str]]:
    """(fields that differ, 'section.field: OLD -> NEW'; fields not recorded in one or both files)."""
    diffs, unknown = [], []
    for section, k in MACHINE_FIELDS + SETTING_FIELDS:
        o, n = (old_doc.get(section) or {}), (new_doc.get(section) or {})
        if not isinstance(o, dict) or not isinstance(n, dict) or k not in o or k not in n:
            unknown.append(f"{section}.{k}")
            continue
        a, b = o[k], n[k]
        if isinstance(a, list) and isinstance(b, list):
            a, b = sorted(map(str, a)), sorted(map(str, b))
        if a != b:
            diffs.append(f"{section}.{k}: {o[k]!r} -> {n[k]!r}")
    return diffs, unknown


@dataclass
class Comparison:
    speed: list[dict] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)
    only_old: list[tuple] = field(default_factory=list)
    only_new: list[tuple] = field(default_factory=list)
    left_out: list[tuple] = field(default_factory=list)   # (key, reason): server rows too short for a p99
    intervals: bool = True          # every speed row had intervals on both sides
    reference_moved: dict = field(default_factory=dict)  # (experiment, scenario, batch) -> eager's (verdict, change, metric)
    allow: Allow = field(default_factory=Allow)
    machine_diffs: list[str] = field(default_factory=list)
    not_recorded: list[str] = field(default_factory=list)

    @property
    def slower(self) -> list[dict]:
        return [r for r in self.speed if r["verdict"] == SLOWER]

    @property
    def accuracy_failures(self) -> list[dict]:
        return [r for r in self.accuracy if r["verdict"] == "fail"]

    @property
    def unverified(self) -> list[str]:
        """What could not be checked and no flag allows: one line each."""
        out = [f"{' / '.join(map(str, r['key']))}: {r['note']}" for r in self.speed if r["verdict"] == CANNOT]
        out += [f"{' / '.join(map(str, r['key']))}: {r['note']}" for r in self.accuracy if r["verdict"] == CANNOT]
        if not self.allow.missing:
            out += [f"{' / '.join(map(str, k))}: in OLD, missing from NEW (--allow-missing)" for k in self.only_old]
        return out

    @property
    def regression(self) -> bool:
        return bool(self.slower or self.accuracy_failures or self.unverified)


def speed_metric(rec: dict) -> str:
    return "p99" if rec.get("scenario") == "server" else "samples_per_s"


def judge_speed(old: dict, new: dict, max_slowdown: float, allow: Allow | None = None) -> dict:
    """One speed row: values, intervals, relative change (NEW/OLD - 1) and the verdict."""
    allow = allow or Allow()
    metric = speed_metric(new)
    o, n = bf.value(old, metric), bf.value(new, metric)
    io, inn = bf.interval(old, metric), bf.interval(new, metric)
    basis = (f"{coverage_label(bf.coverage(old))} / {coverage_label(bf.coverage(new))}"
             if io and inn else "threshold only")
    row = {"metric": metric, "old": o, "new": n, "old_ci": io, "new_ci": inn, "change": None,
           "basis": basis, "note": ""}
    bad = [f"{side}: {', '.join(r) or 'unstable'}" for side, rec in (("OLD", old), ("NEW", new))
           for ok, r in [bf.stability(rec)] if ok is False]
    if o is None or n is None or o <= 0:
        return {**row, "verdict": "not measured" if allow.unstable else CANNOT, "note": "no figure on one side"}
    change = n / o - 1
    row["change"] = change
    if bad:
        note = "unstable measurement (" + "; ".join(bad) + ")"
        return {**row, "verdict": "not comparable" if allow.unstable else CANNOT,
                "note": note + ("; allowed by --allow-unstable" if allow.unstable else "; --allow-unstable to accept")}
    worse = -change if metric == "samples_per_s" else change    # share by which NEW is worse
    apart = True if not (io and inn) else (inn[1] < io[0] or inn[0] > io[1])
    verdict = SAME
    if apart and worse > max_slowdown:
        verdict = SLOWER
    elif apart and -worse > max_slowdown:
        verdict = FASTER
    elif not apart and abs(worse) > max_slowdown:
        row["note"] = "intervals overlap"
    return {**row, "verdict": verdict}


def judge_accuracy(old: dict, new: dict, old_doc: dict, new_doc: dict, max_drop: float,
                   allow: Allow | None = None) -> dict:
    allow = allow or Allow()
    ao, an = bf.accuracy(old, old_doc), bf.accuracy(new, new_doc)
    row = {"metric": an["metric"] or ao["metric"], "old": ao["value"], "new": an["value"],
           "old_count": ao["count"], "new_count": an["count"], "drop": None, "note": ""}
    if ao["value"] is not None and an["value"] is not None:
        row["drop"] = ao["value"] - an["value"]
    if an["pass"] is False:
        reasons = (new.get("accuracy_gate") or {}).get("reasons") if isinstance(new.get("accuracy_gate"), dict) else None
        row["note"] = "NEW fails its own accuracy gate vs the fp32 reference" + (f": {reasons[0]}" if reasons else "")
        if not allow.gate_fail:
            return {**row, "verdict": "fail", "note": row["note"] + " (--allow-gate-fail to accept)"}
    if new.get("task") == "cvae" and (an["value"] is None or ao["value"] is None):
        side = "NEW" if an["value"] is None else "OLD"
        note = f"{side} benched without a judge: only the output error vs fp32 was gated, not the label swap"
        if not allow.no_judge:
            return {**row, "verdict": CANNOT, "note": note + " (bench with --judges, or --allow-no-judge)"}
        return {**row, "verdict": "not measured", "note": note}
    if row["drop"] is None:
        return {**row, "verdict": "not measured"}
    return {**row, "verdict": "fail" if row["drop"] > max_drop + 1e-12 else "pass"}


def _index(doc: dict, path) -> dict[tuple, dict]:
    if isinstance(doc.get("ab"), list):
        raise UserError(f"{path} is an A/B file (segvae ab): its verdicts are in it; compare takes two bench.json files")
    out: dict[tuple, dict] = {}
    for rec in bf.whole_job(doc):
        k = bf.key(rec)
        if k in out:  # two runs of one experiment in one file: tell them apart by run name
            raise UserError(f"{path}: two records for {k} (runs {out[k].get('run')!r} and {rec.get('run')!r}); "
                            f"bench one run per experiment to compare")
        out[k] = rec
    return out


def _server_too_short(old: dict, new: dict) -> str | None:
    """Why a server row cannot be gated (its p99 from fewer queries per round than LoadGen needs), or None."""
    short = [f"{side} {rec.get('queries_per_round')}" for side, rec in (("OLD", old), ("NEW", new))
             if (rec.get("percentile_ok") or {}).get("p99") is False]
    if not short:
        return None
    return (f"server p99 from too few queries per round ({', '.join(short)} < 662, LoadGen's minimum): "
            "not gated; bench with --scenarios server --min-queries 662 to gate it")


def compare(old_doc: dict, new_doc: dict, max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
            max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, old_name: str = "OLD",
            new_name: str = "NEW", allow: Allow | None = None) -> Comparison:
    """The comparison; a UserError (exit 2) when the machines or bench settings differ and
    `allow.different_machine` is off."""
    allow = allow or Allow()
    diffs, unknown = machine_differences(old_doc, new_doc)
    if diffs and not allow.different_machine:
        raise UserError(f"{old_name} and {new_name} come from different machines or bench settings: "
                        + "; ".join(diffs) + " (timings across them say nothing; --allow-different-machine to "
                        "compare anyway)")
    old, new = _index(old_doc, old_name), _index(new_doc, new_name)
    common = [k for k in new if k in old]
    if not common:
        raise UserError(f"{old_name} and {new_name} have no (experiment, backend, scenario, batch size) in "
                        f"common: nothing to compare")
    c = Comparison(only_old=sorted(k for k in old if k not in new), only_new=sorted(k for k in new if k not in old),
                   allow=allow, machine_diffs=diffs, not_recorded=unknown)
    seen_acc = set()
    for k in sorted(common):
        why = _server_too_short(old[k], new[k]) if k[2] == "server" else None
        if why:
            c.left_out.append((k, why))
        else:
            row = judge_speed(old[k], new[k], max_slowdown, allow)
            c.speed.append({"key": k, **row})
            c.intervals &= row["basis"] != "threshold only"
        if k[:2] not in seen_acc:  # accuracy is per (experiment, backend), repeated on its records
            seen_acc.add(k[:2])
            c.accuracy.append({"key": k[:2], **judge_accuracy(old[k], new[k], old_doc, new_doc, max_accuracy_drop, allow)})
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


def _line(s) -> str:
    return str(s).replace("\n", " ")


def md_table(columns: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def _speed_rows(c: Comparison) -> list[list]:
    rows = []
    order = {SLOWER: 0, CANNOT: 1, FASTER: 2}  # regressions first: what a reviewer reads
    for r in sorted(c.speed, key=lambda r: order.get(r["verdict"], 3)):
        d = 1 if r["metric"] == "samples_per_s" else 2
        verdict = f"**{r['verdict']}**" if r["verdict"] in (SLOWER, FASTER, CANNOT) else r["verdict"]
        change = "—" if r["change"] is None else f"{100 * r['change']:+.1f}%"
        rows.append([*r["key"], METRIC_NAMES[r["metric"]], _with_ci(r["old"], r["old_ci"], d),
                     _with_ci(r["new"], r["new_ci"], d), change, verdict, r["basis"], r["note"]])
    return rows


def _accuracy_rows(c: Comparison) -> list[list]:
    rows = []
    for r in sorted(c.accuracy, key=lambda r: r["verdict"] not in ("fail", CANNOT)):
        n = " / ".join("—" if x is None else str(x) for x in (r["old_count"], r["new_count"]))
        verdict = f"**{r['verdict']}**" if r["verdict"] in ("fail", CANNOT) else r["verdict"]
        rows.append([*r["key"], r["metric"] or "—", _fmt(r["old"], 4), _fmt(r["new"], 4),
                     "—" if r["drop"] is None else f"{0.0 - r['drop']:+.4f}", n, verdict, r["note"]])
    return rows


def to_markdown(c: Comparison, old_name: str, new_name: str, max_slowdown: float, max_drop: float) -> str:
    head = "REGRESSION" if (c.slower or c.accuracy_failures) else ("CANNOT VERIFY" if c.unverified else "no regression")
    parts = [f"{len(c.slower)} slower", f"{len(c.accuracy_failures)} accuracy failure(s)",
             f"{len(c.unverified)} not verifiable", f"{sum(r['verdict'] == FASTER for r in c.speed)} faster"]
    out = [f"## Benchmark comparison across sessions: {head}", "",
           f"`{_cell(old_name)}` (OLD) vs `{_cell(new_name)}` (NEW): {', '.join(parts)}, "
           f"{len(c.speed)} configuration(s) compared.", "",
           f"**Host drift is not controlled**: {DRIFT}.", "",
           f"A row is **slower** when NEW is worse than OLD by more than {100 * max_slowdown:g}% and the two "
           f"intervals (order-statistic intervals of the median over rounds; their true coverage in the 'interval' "
           f"column) do not overlap; **faster** the other way round."]
    no_ci = sum(r["basis"] == "threshold only" for r in c.speed)
    if no_ci:
        which = "No row" if no_ci == len(c.speed) else f"{no_ci} row(s) (basis \"threshold only\")"
        out[-1] += (f" {which} had intervals on both sides (bench.json schema v1 has none): there the "
                    f"{100 * max_slowdown:g}% threshold alone decides.")
    if c.machine_diffs:
        out += ["", "**Different machines or settings (allowed by --allow-different-machine)**: "
                + "; ".join(c.machine_diffs)]
    if c.not_recorded:
        out += ["", "Not recorded in one or both files (machine sameness unchecked there): " + ", ".join(c.not_recorded)]
    if c.unverified:
        out += ["", "### Cannot verify (each exits 1 unless its flag allows it)", ""] + [f"- {_line(u)}" for u in c.unverified]
    if c.reference_moved:
        out += ["", f"**{REFERENCE} moved on unchanged weights** in {len(c.reference_moved)} configuration(s): the "
                    f"machine, its load or the bench differ between the files, so those rows' verdicts are not the "
                    f"backends' alone (their notes say so). `segvae ab` on both run folders tells them apart."]
    out += ["", "### Speed", ""]
    out += md_table(["experiment", "backend", "scenario", "batch", "metric", "OLD [interval]", "NEW [interval]",
                     "change", "verdict", "interval (OLD / NEW)", "note"], _speed_rows(c))
    if c.left_out:
        out += ["", "Left out of the speed gate:"] + [f"- {' / '.join(map(str, k))}: {_line(why)}" for k, why in c.left_out]
    out += ["", f"### Accuracy (higher is better; fail = a drop of more than {max_drop:g}, or NEW failing its own gate)", ""]
    out += md_table(["experiment", "backend", "metric", "OLD", "NEW", "change", "samples (OLD / NEW)",
                     "verdict", "note"], _accuracy_rows(c))
    for side, keys in (("OLD", c.only_old), ("NEW", c.only_new)):
        if keys:
            out += ["", f"Only in {side} (not compared): " + "; ".join(" / ".join(map(str, k)) for k in keys)]
    return "\n".join(out) + "\n"


def run_compare(old_path, new_path, max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
                max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, out: str | Path | None = None,
                allow: Allow | None = None) -> int:
    """Print (and with `out`, write) the Markdown report; 1 on a regression or anything that cannot
    be verified, else 0 (bad input, different machines included: a UserError, exit 2)."""

    old_doc, new_doc = bf.load(old_path, "OLD bench results"), bf.load(new_path, "NEW bench results")
    c = compare(old_doc, new_doc, max_slowdown, max_accuracy_drop, str(old_path), str(new_path), allow)
    md = to_markdown(c, str(old_path), str(new_path), max_slowdown, max_accuracy_drop)
    print(md, end="", flush=True)
    if out is not None:
        atomic_write_text(out, md)
    return 1 if c.regression else 0
