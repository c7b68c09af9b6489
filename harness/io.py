"""Atomic writes and safe JSON reads for the harness: the implementation lives in `models.io`
(shared with `exports/`, which imports nothing from `harness`)."""
from models.io import (atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, inside, jsonable,
                       read_json)

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "read_json", "inside",
           "jsonable"]
