"""Build-time hooks of the docs site (mkdocs.yml ``hooks:``).

- The results page is benchmarks/RESULTS.md itself (with its figures), so there is one copy of every number.
- The command-line reference is generated from ``unipelt.cli.build_parser()``, so it cannot drift from the CLI.
- Every public object of the Python API must have a docstring: a missing one is a warning, which ``mkdocs build
  --strict`` turns into a failed build.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.plugins.unipelt")
ROOT = Path(__file__).resolve().parents[1]
CLI_MARKER = "<!-- cli-reference -->"
# The public API the reference documents: module -> names (the objects and their public methods need docstrings).
PUBLIC_API = {
    "unipelt.model": ["UniPELTModel", "add_unipelt", "load_unipelt"],
    "unipelt.config": ["UniPELTConfig"],
    "unipelt.errors": ["UniPELTError", "UnsupportedModelError", "CheckpointMismatchError", "DataError"],
}


def on_files(files: Files, config) -> Files:
    """Add benchmarks/RESULTS.md as results.md and its figures under figures/."""
    files.append(File.generated(config, "results.md", abs_src_path=str(ROOT / "benchmarks" / "RESULTS.md")))
    for figure in sorted((ROOT / "benchmarks" / "figures").glob("*.png")):
        files.append(File.generated(config, f"figures/{figure.name}", abs_src_path=str(figure)))
    return files


def on_pre_build(config) -> None:
    """Warn (a failure under --strict) for every public API object or public method without a docstring."""
    for module_name, names in PUBLIC_API.items():
        module = importlib.import_module(module_name)
        for name in names:
            obj = getattr(module, name)
            if not inspect.getdoc(obj):
                log.warning("%s.%s has no docstring", module_name, name)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not callable(member):
                        continue
                    if not inspect.getdoc(member):
                        log.warning("%s.%s.%s has no docstring", module_name, name, attr)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Put the generated command-line reference where the page has the marker."""
    if CLI_MARKER not in markdown:
        return markdown
    return markdown.replace(CLI_MARKER, cli_reference())


def cli_reference() -> str:
    """One section per verb: its description and its full ``--help``, at a fixed width."""
    os.environ["COLUMNS"] = "100"
    from unipelt.cli import build_parser

    parser = build_parser()
    parser.prog = "unipelt"
    sections = [f"```text\n{parser.format_help()}```\n"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        sub.prog = f"unipelt {name}"
        sections.append(f"## unipelt {name}\n\n```text\n{sub.format_help()}```\n")
    return "\n".join(sections)
