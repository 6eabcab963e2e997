"""`qkov report ANALYSIS_JSON --out DIR`: re-render report.html from an analysis.json.

Nothing is recomputed (and torch is never imported): the report only draws the numbers
analysis.json holds, so a report can be re-rendered after a report fix without the model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="re-render report.html from an analysis.json (no model needed)",
        description="Read ANALYSIS_JSON (written by `qkov analyze` or `qkov demo`), check its "
        "schema version and write OUT/report.html, a single file that works offline.",
    )
    p.add_argument("analysis", metavar="ANALYSIS_JSON", help="an analysis.json file")
    p.add_argument("--out", required=True, help="output directory for report.html")
    p.set_defaults(func=run)


def load_analysis(path: str) -> dict:
    """The JSON object in `path`, validated against the current schema (QkovError if not)."""
    import json
    from pathlib import Path

    from qkov.errors import QkovError
    from qkov.report import validate

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QkovError(
            f"{path} does not exist: pass the analysis.json of `qkov analyze`"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise QkovError(f"cannot read {path} ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise QkovError(f"{path} is not valid JSON ({e})") from None
    return validate(data, source=path)


def run(args: argparse.Namespace) -> int:
    from qkov.io import atomic_write_text, check_output_dir
    from qkov.report import render_report

    out = check_output_dir(args.out)
    html = render_report(load_analysis(args.analysis))
    path = out / "report.html"
    atomic_write_text(path, html)
    print(f"wrote {path}")
    return 0
