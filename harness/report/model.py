"""The report's building blocks (tables, figures, blocks, collected results) and number formatting."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bench_fields import num as as_number  # noqa: F401 - the report's name for it

DASH = "—"
ASSETS_DIR = "report_assets"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# =========================================================================== blocks
@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    name: str          # asset file name (safe, unique)
    png: bytes
    caption: str = ""


@dataclass
class Block:
    kind: str          # "h1" | "h2" | "h3" | "p" | "table" | "figure" | "code"
    content: Any


@dataclass
class Results:
    runs_dir: Path
    runs: list[dict] = field(default_factory=list)        # {"dir", "name", "config", "metrics"}
    judges: dict[str, dict] = field(default_factory=dict)
    bench: dict | None = None
    pipeline: dict | None = None
    warnings: list[str] = field(default_factory=list)


# =========================================================================== formatting
def fmt(v, digits: int = 4, suffix: str = "") -> str:
    """A number with fixed decimals; None, NaN, missing or non-numbers become a dash."""
    x = as_number(v)
    return DASH if x is None else f"{x:.{digits}f}{suffix}"


def fmt_pct(v, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage."""
    x = as_number(v)
    return DASH if x is None else f"{100 * x:.{digits}f}%"


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n - 1) of the numeric values; std is None for n < 2."""
    xs = [x for x in (as_number(v) for v in values) if x is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt_stat(values, digits: int = 4) -> str:
    """"mean ± std" over seeds (sample std), or the single value."""
    m, s, n = mean_std(values)
    if n == 0:
        return DASH
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def as_text(v) -> str:
    return DASH if v is None or v == "" else str(v)


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d
