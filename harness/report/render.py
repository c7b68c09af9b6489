"""Render one list of blocks as self-contained HTML and as Markdown, so the two cannot disagree."""
from __future__ import annotations

import base64
import html

from harness.report.model import ASSETS_DIR, Block, Figure, Table


# =========================================================================== render
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}.scroll{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:.6em 0 1.2em;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;overflow-wrap:normal}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}caption{caption-side:bottom;font-size:12px;color:#666;text-align:left;
overflow-wrap:anywhere}figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:12px;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px;
white-space:pre-wrap}"""


def render_html(blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>segvae-bench report</title>", f"<style>{CSS}</style>", "</head>", "<body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{e(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.content)}</p>")
        elif b.kind == "code":
            out.append(f"<pre><code>{e(b.content)}</code></pre>")
        elif b.kind == "table":
            t: Table = b.content
            out.append('<div class="scroll"><table>')  # wide tables scroll in their box, not the page
            if t.caption:
                out.append(f"<caption>{e(t.caption)}</caption>")
            out.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows]
            out.append("</tbody></table></div>")
        elif b.kind == "figure":
            f: Figure = b.content
            data = base64.b64encode(f.png).decode("ascii")
            out.append(f'<figure><img alt="{e(f.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(f.caption)}</figcaption></figure>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(s: str) -> str:
    return _md_text(s).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_text(s) -> str:
    """Markdown viewers render raw HTML: neutralise it in text that came from files."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_md(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + _md_cell(b.content), ""]
        elif b.kind == "p":
            out += [_md_text(b.content), ""]
        elif b.kind == "code":
            fence = "````" if "```" in str(b.content) else "```"
            out += [fence, str(b.content), fence, ""]
        elif b.kind == "table":
            t: Table = b.content
            out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
            out.append("|" + "|".join("---" for _ in t.columns) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out += [""] + ([f"*{_md_cell(t.caption)}*", ""] if t.caption else [])
        elif b.kind == "figure":
            f: Figure = b.content
            alt = _md_cell(f.caption).replace("[", "(").replace("]", ")")
            out += [f"![{alt}]({ASSETS_DIR}/{f.name})", ""]
    return "\n".join(out)
