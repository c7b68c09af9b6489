"""Every figure README.md publishes traces to a committed JSON under docs/results/.

A figure is a number in README's prose (code blocks are commands: their numbers are flags). Each
paragraph, bullet or table row is checked against the JSON files under the docs/results/ folders it
links to (the nearest earlier block's links when it has none); in a section that links no results
folder, every figure must be on ALLOWED. A figure matches a JSON number that rounds to it at the figure's own decimals; a
percentage may be a fraction x 100; minutes may be a `*seconds` value / 60. A ratio "N.Nx" must be a speed-up
median or interval end (`speedup` for throughput, `speedup_p50` where its clause says p50), so a
throughput ratio cannot be published as a latency ratio. Integers below 10 are counts of things
(variants, stages, "8/8") and are not checked. What is neither is on ALLOWED below, with its reason.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

# figure -> why it needs no JSON. Keep this short: a measured figure belongs in a JSON.
ALLOWED = {
    "3.10": "the Python version pyproject.toml requires",
    "15": "the line count of docs/deploy.md's numpy example, not a measurement",
    "13": "the CUDA major version of torch's pinned wheels (torch.version.cuda), not a measurement",
    "32": "the 32-channel UNet: a width setting that names the model (its config.json)",
}# a number not inside a word, path, version or hash (2802f56); "3.2x" and "8,000" are figures
# both ends of a range "0.73-0.75" are figures; "cvae-mnist2" or "v4" are not
FIGURE = re.compile(r"(?<![\w./])(?<![A-Za-z_]-)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\d/]|\.\d|[a-wyzA-Z_])")


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(section heading, block) for each paragraph, bullet and table row (under its header) of the
    prose; code blocks dropped."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    blocks, section = [], ""
    for chunk in re.split(r"\n\s*\n", text):
        lines = chunk.strip("\n").splitlines()
        if lines and lines[0].startswith("#"):
            section = lines[0]
            lines = lines[1:]
        if lines and lines[0].startswith("|"):  # a table: each row with the header, which may say "minutes"
            blocks += [(section, f"{lines[0]}\n{row}") for row in lines[2:]]
            continue
        current: list[str] = []
        for line in lines:
            if line.startswith("- ") and current:
                blocks.append((section, "\n".join(current)))
                current = []
            current.append(line)
        if current:
            blocks.append((section, "\n".join(current)))
    return blocks


def linked_folders(block: str) -> list[Path]:
    """docs/results/ folders a block links to (a README.md or JSON link stands for its folder)."""
    folders = []
    for target in re.findall(r"\]\((docs/results/[^)#\s]*)", block):
        path = REPO / target
        folders.append(path.parent if path.suffix else path)
    return folders


def json_numbers(folder: Path) -> dict[str, list[float]]:
    """Every finite number in the JSON files under folder, by the last key above it."""
    found: dict[str, list[float]] = {}

    def walk(obj, key, parent):
        if isinstance(obj, bool):
            return
        if isinstance(obj, (int, float)):
            if math.isfinite(obj):
                found.setdefault(key, []).append(float(obj))
                found.setdefault(f"{parent}.{key}", []).append(float(obj))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, k, key)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key, parent)

    for path in sorted(folder.rglob("*.json")):
        walk(json.loads(path.read_text()), "", "")
    return found


def rounds_to(value: float, token: str) -> bool:
    decimals = len(token.split(".")[1]) if "." in token else 0
    return round(value, decimals) == float(token)


def figure_problem(token: str, after: str, clause: str, ratio: str | None, in_minutes: bool,
                   numbers: dict[str, list[float]]) -> str | None:
    """None when the figure `token` (text `after` it, in `clause`) matches a number in `numbers`;
    `ratio`: "median" for a speed-up ("3.2x", either end of "3.1-3.3x"), "interval" for an end of its
    interval ("3.2x [3.1-3.3]"), None for any other figure;
    `in_minutes`: the block gives times in minutes, which may be a `*seconds` value / 60."""
    flat = token.replace(",", "")
    if ratio and "." in flat:
        key = "speedup_p50" if "p50" in clause else "speedup"
        parts = ("lo", "hi") if ratio == "interval" else ("median",)
        if any(rounds_to(v, flat) for part in parts for v in numbers.get(f"{key}.{part}", [])):
            return None
        return f"no `{key}` {' or '.join(parts)} in the linked JSON rounds to {token}x"
    if "." not in flat and float(flat) < 10:
        return None
    values = [v for vs in numbers.values() for v in vs]
    if in_minutes or re.match(r"\s*min\b", after):  # only a duration can be given in minutes
        candidates = [v / 60 for k, vs in numbers.items() if "seconds" in k for v in vs]
    else:
        candidates = values + ([v * 100 for v in values] if re.match(r"(-[\d.]+)?\s*%", after) else [])
    if any(rounds_to(v, flat) for v in candidates):
        return None
    return f"{token} is in no JSON the paragraph links to"


def unsourced_figures(readme: str) -> list[str]:
    problems, section_links, last_links = [], {}, []
    cache: dict[Path, dict[str, list[float]]] = {}
    for section, block in readme_blocks(readme):
        links = linked_folders(block)
        if links:
            section_links.setdefault(section, []).extend(links)
            last_links = links
        elif section_links.get(section):
            links = last_links
        else:
            links = []  # a section that names no results folder may only hold ALLOWED figures
        numbers: dict[str, list[float]] = {}
        for folder in links:
            if folder not in cache:
                cache[folder] = json_numbers(folder)
            for k, vs in cache[folder].items():
                numbers.setdefault(k, []).extend(vs)
        prose = re.sub(r"\]\([^)]*\)|`[^`]*`", "", block)  # link targets and inline code are not figures
        if not prose.startswith("|"):  # a paragraph's line breaks are spaces; a table's end its rows
            prose = re.sub(r"\s*\n\s*", " ", prose)
        for m in FIGURE.finditer(prose):
            token = m.group(1) + (m.group(2) or "")
            if token in ALLOWED:
                continue
            seps = ";,:()\n"  # the clause around the figure: what it says it measures
            start = max(prose.rfind(c, 0, m.start()) for c in seps) + 1
            end = min([i for i in (prose.find(c, m.end()) for c in seps) if i >= 0] or [len(prose)])
            clause = prose[start:end]
            in_minutes = bool(re.match(r"\|.*\bminutes\b", block))  # a table whose header says minutes
            after = prose[m.end():m.end() + 12]
            ratio = ("interval" if re.search(r"\dx\s*\[[\d.\s-]*$", prose[:m.start()])
                     else "median" if re.match(r"(-[\d.]+)?x", after) else None)
            problem = figure_problem(token, after, clause, ratio, in_minutes, numbers)
            if problem:
                problems.append(f"{section or 'top'}: {problem}: ...{prose[max(0, m.start() - 60):m.end() + 20]!r}")
    return problems


def test_every_readme_figure_traces_to_a_committed_json():
    readme = (REPO / "README.md").read_text()
    problems = unsourced_figures(readme)
    assert not problems, "figures in README.md with no committed JSON behind them:\n" + "\n".join(problems)
    stale = [f for f in ALLOWED if not re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", readme)]
    assert not stale, f"ALLOWED figures no longer in README.md (drop them): {stale}"


@pytest.mark.parametrize("text, bad", [
    ("Speed ([q](docs/results/quick/README.md)): int8 batch-1 p50 9.87x.", "9.87x"),
    ("Setup ([q](docs/results/quick/README.md)) took 123.4 s.", "123.4"),
    ("Judges ([q](docs/results/quick/README.md)) read 12.34% of images.", "12.34"),
    ("## Setup\n\nIt takes 42.5 s, says no results folder.", "42.5"),
])
def test_a_figure_with_no_json_behind_it_is_caught(text, bad):
    problems = unsourced_figures(text)
    assert len(problems) == 1 and bad.rstrip("x") in problems[0], problems


def test_a_throughput_ratio_is_not_accepted_as_a_p50_ratio():
    """The quick run's single-stream int8 throughput ratio (speedup) is not its p50 ratio (speedup_p50)."""
    bench = json.loads((RESULTS / "quick" / "bench.json").read_text())
    rec = next(r for r in bench["results"] if r["backend"] == "ort-int8" and r["scenario"] == "single-stream"
               and r.get("speedup") and r.get("speedup_p50"))
    thr, p50 = rec["speedup"]["median"], rec["speedup_p50"]["median"]
    assert f"{thr:.2f}" != f"{p50:.2f}"
    link = "([q](docs/results/quick/README.md))"
    assert not unsourced_figures(f"Speed {link}: int8 at batch 1, p50 {p50:.2f}x.")
    assert unsourced_figures(f"Speed {link}: int8 at batch 1, p50 {thr:.2f}x.")
    assert not unsourced_figures(f"Speed {link}: int8 single-stream throughput {thr:.2f}x.")
