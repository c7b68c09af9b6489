"""Sections of the report: each turns collected results into blocks (headings, text, tables, figures)."""
from __future__ import annotations

from harness.figures import OVERLAY_LEGEND
from harness.bench.verdicts import verdicts
from harness.report.bench_tables import bench_groups, bench_table, server_table
from harness.report.collect import _safe_name, groups, read_png
from harness.report.model import Block, Figure, Results, Table, as_number, as_text, dig, fmt
from harness.report.plots import plot_curves, plot_latency, plot_throughput
from harness.report.tables import cvae_table, env_table, judge_table, swap_labels_table, swap_table, unet_table


# =========================================================================== sections
def build_blocks(res: Results, figures: list[Figure]) -> list[Block]:
    blocks: list[Block] = [Block("h1", "segvae-bench report"),
                           Block("p", f"Built from saved results in {res.runs_dir.name}/ "
                                      f"({len(res.runs)} runs). Nothing was retrained.")]
    unets, cvaes = groups(res, "segmentation"), groups(res, "cvae")
    blocks += _unet_section(res, unets, figures)
    blocks += _cvae_section(res, cvaes, figures)
    blocks += _judge_section(res, cvaes)
    blocks += _bench_section(res, figures)
    blocks += _profile_section(res)
    blocks += _reproduce_section(res)
    if res.warnings:
        blocks += [Block("h2", "Warnings"), Block("code", "\n".join(res.warnings))]
    return blocks


def _figure(figures: list[Figure], name: str, png: bytes | None, caption: str) -> list[Block]:
    if png is None:
        return []
    fig = Figure(_safe_name(name), png, caption)
    figures.append(fig)
    return [Block("figure", fig)]


def _unet_section(res: Results, unets: dict, figures: list[Figure]) -> list[Block]:
    blocks = [Block("h2", "Segmentation: UNet variants (Oxford-IIIT Pet)")]
    if not unets:
        return blocks + [Block("p", "Not run: no segmentation runs found.")]
    blocks.append(Block("table", unet_table(unets)))
    blocks += _figure(figures, "unet-curves", plot_curves(unets, "dice", "val Dice"),
                      "train loss and validation Dice per epoch (mean over seeds)")
    blocks.append(Block("h3", "Test overlays"))
    for name, runs in unets.items():
        for r in runs:
            png = read_png(res, r, dig(r["metrics"], "samples", "overlays"))
            blocks += _figure(figures, f"overlay-{r['dir'].name}", png,
                              f"{name}, seed {r['config'].get('seed', '?')}, test images: {OVERLAY_LEGEND}")
    return blocks


def _cvae_section(res: Results, cvaes: dict, figures: list[Figure]) -> list[Block]:
    blocks = [Block("h2", "Conditional VAEs (MNIST, CIFAR-10)")]
    if not cvaes:
        return blocks + [Block("p", "Not run: no CVAE runs found.")]
    blocks.append(Block("table", cvae_table(cvaes)))
    blocks += _figure(figures, "cvae-curves", plot_curves(cvaes, "elbo", "val ELBO"),
                      "train loss and validation ELBO per epoch (mean over seeds)")
    for name, runs in cvaes.items():
        r = runs[0]
        samples = r["metrics"].get("samples")
        samples = samples if isinstance(samples, dict) else {}
        blocks.append(Block("h3", f"Label swap: {name} (seed {r['config'].get('seed', '?')})"))
        blocks.append(Block("p", "Each image is encoded with its TRUE label and decoded with a WRONG one."))
        c = r["metrics"].get("collapse")
        if isinstance(c, dict):
            from harness.collapse import collapse_line

            blocks.append(Block("p", collapse_line(name, c)))
        fig = read_png(res, r, samples.get("figure"))
        if fig is not None:
            blocks += _figure(figures, f"swap-figure-{r['dir'].name}", fig, f"{name}: sources and 5x5 label-swap grid")
        else:
            blocks += _figure(figures, f"swap-sources-{r['dir'].name}", read_png(res, r, samples.get("sources")),
                              f"{name}: source images")
            blocks += _figure(figures, f"swap-grid-{r['dir'].name}", read_png(res, r, samples.get("grid")),
                              f"{name}: 5x5 label-swap grid")
        t = swap_labels_table(samples.get("labels"), _classes(r["config"].get("dataset")))
        if t is not None:
            blocks.append(Block("table", t))
    return blocks


def _classes(dataset) -> tuple[str, ...] | None:
    if dataset == "cifar10":
        try:
            from harness.data import CIFAR10_CLASSES
        except Exception:  # noqa: BLE001 - names are cosmetic
            return None
        return tuple(CIFAR10_CLASSES)
    return None


def _judge_section(res: Results, cvaes: dict) -> list[Block]:
    blocks = [Block("h2", "Judge scores")]
    if not res.judges:
        blocks.append(Block("p", "Judges: not run (no judges/<dataset>/judge.json)."))
    else:
        blocks.append(Block("p", "A small CNN per dataset, trained on the real training split with the "
                                 "degradations a generator produces (blur, low contrast, noise), and measured on "
                                 "the real test split as is and degraded before any swap score is read."))
        blocks.append(Block("table", judge_table(res)))
    t = swap_table(res, cvaes)
    if t.rows:
        blocks.append(Block("table", t))
    else:
        blocks.append(Block("p", "Label-swap scores: not run (no judged CVAE bench records)."))
    return blocks


def _bench_section(res: Results, figures: list[Figure]) -> list[Block]:
    blocks = [Block("h2", "PyTorch vs ONNX Runtime")]
    if res.bench is None:
        return blocks + [Block("p", "Benchmark: not run (no bench.json).")]
    bg = bench_groups(res)
    if not bg:
        blocks.append(Block("p", "Benchmark: not run (bench.json has no results)."))
    for name, recs in bg.items():
        blocks.append(Block("h3", name))
        blocks += [Block("p", f"Verdict: {v['text']}") for v in verdicts(recs)]  # the one line first
        blocks.append(Block("table", bench_table(recs)))
        st = server_table(recs)
        if st is not None:
            blocks.append(Block("table", st))
        blocks += _figure(figures, f"bench-throughput-{name}", plot_throughput(recs), f"{name}: throughput vs batch size")
        blocks += _figure(figures, f"bench-latency-{name}", plot_latency(recs), f"{name}: latency percentiles")
    blocks += _machines_note(res)
    skipped = res.bench.get("skipped") or {}
    blocks.append(Block("h3", "Skipped backends"))
    if isinstance(skipped, dict) and skipped:
        blocks.append(Block("table", Table(["backend", "reason"], [[str(k), as_text(v)] for k, v in skipped.items()])))
    else:
        blocks.append(Block("p", "None."))
    return blocks


def _cpu_text(model, flags) -> str:
    return f"{model or 'an unrecorded CPU'} ({', '.join(flags) if flags else 'no AVX2/AVX-512 flags recorded'})"


def _machines_note(res: Results) -> list[Block]:
    """Which CPU gated each int8 graph at export and which ran this bench: an int8 graph's accuracy
    depends on the kernels (VNNI or not) of the machine that runs it."""
    env = res.bench.get("env") or {}
    bench_cpu = (env.get("cpu_model"), env.get("cpu_flags") or [])
    lines = [f"This bench ran on {_cpu_text(*bench_cpu)}."]
    for run in res.runs:
        isa = ((run.get("export") or {}).get("int8") or {}).get("isa")
        if not isinstance(isa, dict):
            continue
        where = (isa.get("cpu_model"), isa.get("cpu_flags") or [])
        same = where == bench_cpu
        lines.append(f"{run['name']}: int8 exported and gated on {_cpu_text(*where)}, reduce_range "
                     f"{'on' if isa.get('reduce_range') else 'off'} ({isa.get('why')})"
                     + ("." if same else "; NOT the bench's CPU: the bench's own gate is the one that holds here."))
    return [Block("p", " ".join(lines))]


def _profile_section(res: Results) -> list[Block]:
    """Per-layer tables of every run that `segvae profile` was run on (RUN/profile.json)."""
    from harness.profile import profile_intro, profile_tables

    profiled = [r for r in res.runs if r.get("profile")]
    if not profiled:
        return []
    blocks = [Block("h2", "Per layer: where the time goes")]
    for r in profiled:
        doc = r["profile"]
        try:
            tables = profile_tables(doc)
            intro = profile_intro(doc)
        except (KeyError, TypeError, ValueError) as e:
            res.warnings.append(f"{r['dir'].name}/profile.json: unreadable ({type(e).__name__}: {e}); skipped")
            continue
        blocks += [Block("h3", f"{r['name']} ({r['dir'].name})"), Block("p", intro)]
        for title, columns, rows in tables:
            if rows:
                blocks.append(Block("table", Table(columns, rows, title)))
    return blocks


def _reproduce_section(res: Results) -> list[Block]:
    blocks = [Block("h2", "Environment and reproduction")]
    et = env_table(res)
    blocks.append(Block("table", et) if et else Block("p", "Environment: not recorded (no bench.json env)."))
    env = (res.bench or {}).get("env") or {}
    cmd = next((env.get(k) for k in ("command", "argv", "command_line") if env.get(k)), None) \
        if isinstance(env, dict) else None
    if cmd:
        blocks += [Block("p", "Bench command:"), Block("code", " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd))]
    p = res.pipeline
    blocks.append(Block("h3", "Reproduce"))
    if not p:
        return blocks + [Block("p", "Pipeline: not run (no pipeline.json).")]
    blocks.append(Block("p", f"preset {as_text(p.get('preset'))}, data root {as_text(p.get('data_root'))}, "
                             f"wall time {fmt(p.get('wall_seconds'), 1)} s"))
    stages = p.get("stage_seconds")
    if isinstance(stages, dict) and stages:
        blocks.append(Block("table", Table(["stage", "seconds", "minutes"],
                                           [[as_text(k), fmt(v, 1), fmt(as_number(v) / 60 if as_number(v) else None, 1)]
                                            for k, v in stages.items()],
                                           "Wall time of each stage of `segvae run` (pipeline.json stage_seconds).")))
    reused = p.get("reused_runs") or []
    if isinstance(reused, list) and reused:
        blocks.append(Block("p", f"Reused finished runs (same config, trained before this invocation; "
                                 f"their commands are listed below): {', '.join(map(as_text, reused))}"))
    cmds = p.get("commands") or []
    if isinstance(cmds, list) and cmds:
        blocks += [Block("p", "Every command below is the argv that ran (pipeline.json `argv`), shell-quoted:"),
                   Block("code", "\n".join(str(c) for c in cmds))]
    return blocks
