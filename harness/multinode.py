"""Multi-machine runs: every rank must see rank 0's output folder.

Why: the trainer writes config, best weights and checkpoints from rank 0 only and every rank reads
them back (best-weights reload, --resume). On machines whose --out is not one shared filesystem,
ranks would take different branches around a barrier and hang. So at start rank 0 writes a token
with a random nonce into the folder, every rank reads it, the verdicts are gathered to ALL ranks and
every rank raises the same UserError together (no rank is left waiting at a barrier).
"""
from __future__ import annotations

import secrets
import socket
from pathlib import Path

from harness.errors import UserError

TOKEN_FILE = ".segvae-shared-check"


def token_problem(token: Path, nonce: str) -> str | None:
    """None when `token` holds rank 0's nonce, else what this rank saw instead."""
    try:
        text = token.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "rank 0's check file is not there"
    except OSError as e:
        return f"cannot read rank 0's check file ({type(e).__name__}: {e})"
    if text != nonce:
        return "the check file there was written by another run (a copy or another filesystem)"
    return None


def shared_folder_verdict(out_dir: Path, reports: list[tuple[int, str, str | None]]) -> str | None:
    """reports: (rank, host, problem or None) from every rank -> one error message, or None if all see it."""
    bad = [(r, h, p) for r, h, p in reports if p]
    if not bad:
        return None
    where = "; ".join(f"rank {r} on {h}: {p}" for r, h, p in sorted(bad))
    return (f"output folder {out_dir} is not shared by all {len(reports)} processes ({where}). Every machine "
            f"of a multi-machine run must see the same --out folder: put it on a shared filesystem (e.g. NFS) "
            f"mounted at the same path on every machine")


def check_shared_out_dir(accelerator, out_dir: Path) -> None:
    """Raise the same UserError on every rank when some rank cannot see rank 0's out_dir.

    One process: nothing to check. Every rank takes part in every collective below, whatever it saw.
    """
    if accelerator.num_processes <= 1:
        return
    from accelerate.utils import broadcast_object_list, gather_object

    out_dir = Path(out_dir)
    token = out_dir / TOKEN_FILE
    nonce = [secrets.token_hex(16) if accelerator.is_main_process else None]
    broadcast_object_list(nonce, from_process=0)
    problem = None
    if accelerator.is_main_process:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            token.write_text(nonce[0], encoding="utf-8")
        except OSError as e:  # reported with everyone's verdict, never raised before the collectives
            problem = f"rank 0 cannot write there ({type(e).__name__}: {e})"
    accelerator.wait_for_everyone()
    if problem is None:
        problem = token_problem(token, nonce[0])
    reports = gather_object([(accelerator.process_index, socket.gethostname(), problem)])
    if accelerator.is_main_process:  # everyone has read it: the gather above is the barrier
        token.unlink(missing_ok=True)
    message = shared_folder_verdict(out_dir, [tuple(r) for r in reports])
    if message:
        raise UserError(message)
