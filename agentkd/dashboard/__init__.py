"""The cost dashboard: a local web app and a standalone HTML report over the SQL log.

`queries` owns the data (SQL aggregates per page), `rollup` the incremental pre-aggregation of
the large log tables, `html` the templates and formatting, `app` the FastAPI routes and access
control. Importing this package does not import the web stack; `agentkd report --html` needs
only Jinja2 and plotly's bundled JS (`pip install 'agentkd[dashboard]'`).
"""

from agentkd.dashboard.queries import Dashboard, Filters

__all__ = ["Dashboard", "Filters", "write_report"]


def write_report(log: str, path: str, run_ids: list[str] | None = None) -> str:
    """Write the runs overview of `log` as one self-contained HTML file; returns its path."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from agentkd.dashboard.html import render_report

    dash = Dashboard(log)
    page = dash.overview(Filters(runs=tuple(run_ids or ())))
    html = render_report(page, source=make_url(log).render_as_string(hide_password=True))
    Path(path).write_text(html, encoding="utf-8")
    return path
