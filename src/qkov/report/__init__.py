"""Self-contained HTML report and notebook views, drawn from the analysis dict.

    render_report(analysis) -> str        the whole report.html (offline, no network)
    attention_html(tokens, pattern)       notebook view of attention patterns
    head_table_html(records)              notebook table of heads and their scores
    eigenvalues_html(eigenvalues)         notebook complex-plane plot + copying statistic

The analysis dict's schema is documented in qkov.report.schema (SCHEMA_VERSION)."""

from qkov.report.escape import dumps, jsonable, script_json
from qkov.report.page import render_report
from qkov.report.schema import SCHEMA_VERSION, validate
from qkov.report.widgets import attention_html, eigenvalues_html, head_table_html

__all__ = [
    "SCHEMA_VERSION",
    "attention_html",
    "dumps",
    "eigenvalues_html",
    "head_table_html",
    "jsonable",
    "render_report",
    "script_json",
    "validate",
]
