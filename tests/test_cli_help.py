"""`--help` answers: every flag says what it does and its default; every command ends with an example;
every `segvae` flag that README.md and docs/ name exists in the parser."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from harness.cli_parser import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help_with_its_default():
    missing = []
    for name, sub in _subparsers().items():
        assert sub.epilog and sub.epilog.startswith("example:\n  segvae "), name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            if not text:
                missing.append(f"{name} {action.dest}: no help")
            elif action.option_strings and not action.required and "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}: help does not say its default")
    assert not missing, "\n".join(missing)


def test_each_example_parses():
    parser = build_parser()
    for name, sub in _subparsers().items():
        argv = sub.epilog.split("\n", 1)[1].split("#")[0].split()[1:]
        assert argv[0] == name
        parser.parse_args(argv)  # exits (SystemExit) on an unknown flag or a bad value


def unknown_doc_flags(root: Path) -> tuple[int, list[str]]:
    """(flags seen, flags unknown to their command) over each `segvae COMMAND ...` in README.md and docs/*.md."""
    subs = _subparsers()
    seen, wrong = 0, []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            for m in re.finditer(r"\bsegvae (\w+)((?: [^`|]*)?)", line):
                if m.group(1) not in subs:
                    continue
                known = {o for a in subs[m.group(1)]._actions for o in a.option_strings}
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2)):
                    seen += 1
                    if flag not in known and flag.replace("--no-", "--", 1) not in known:
                        wrong.append(f"{path.name}: segvae {m.group(1)} {flag}")
    return seen, wrong


def test_flags_named_in_the_docs_exist():
    seen, wrong = unknown_doc_flags(ROOT)
    assert seen > 20, "the docs name fewer segvae flags than expected: is the scan broken?"
    assert not wrong, "flags in the docs that the parser does not have:\n" + "\n".join(wrong)


def test_the_docs_scan_catches_an_unknown_flag(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("run `segvae bench runs/x --rounds 3 --frobnicate 2`\n")
    assert unknown_doc_flags(tmp_path) == (2, ["README.md: segvae bench --frobnicate"])
