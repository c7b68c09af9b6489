"""Atomic file writes and safe JSON reads: a kill mid-write never leaves a half file.

Lives beside the models (it needs nothing but the standard library) so that `exports/`, the
deployment side, writes atomically without importing `harness`; `harness.io` re-exports it."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from models.errors import UserError


def _new_temp(path: Path) -> Path:
    """An empty file beside path, created with mode 0666 so the kernel applies the process's umask
    (as for any new file): no need to read the umask, which only a process-wide change can do."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) on a temporary file beside path, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def jsonable(o):
    """json.dumps `default` for every file and message the project writes: paths, numpy arrays
    (.tolist()), numpy and torch scalars (.item())."""
    if isinstance(o, Path):
        return str(o)
    if getattr(o, "ndim", 0) and hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


def inside(base: str | os.PathLike, name: str) -> Path:
    """Join a name taken from a file (metadata, config) to base, refusing anything that escapes it."""
    base = Path(base).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise UserError(f"refusing path {name!r}: it points outside {base}")
    return target
