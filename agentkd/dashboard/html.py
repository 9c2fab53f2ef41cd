"""HTML rendering shared by the web app and the standalone report: Jinja2 templates,
number formatting, and the locally served chart library (Plotly's JS from the `plotly` package).

No page ever loads anything from the network: the app serves `plotly.min.js` from the installed
package and the report inlines it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from agentkd.errors import ConfigError

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

NAV = [("overview", "/", "Overview"), ("costs", "/costs", "Costs"),
       ("cascade", "/cascade", "Cascade"), ("episodes", "/episodes", "Episodes"),
       ("models", "/models", "Models")]


def fmt(value: Any, kind: str = "text") -> str:
    """Display text for one cell; the raw value goes to `data-value` and CSV."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind in ("int", "link"):
        return f"{round(value):,}" if isinstance(value, int | float) else str(value)
    if kind == "usd":
        sign = "-" if value < 0 else ""
        return f"{sign}${abs(value):,.4f}" if abs(value) < 1000 else f"{sign}${abs(value):,.2f}"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "ratio":
        return f"{value:.2f}×"
    if kind == "float":
        return f"{value:,.1f}"
    if kind == "float2":
        return f"{value:.2f}"
    if kind == "ms":
        return f"{value:,.0f} ms"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def raw(value: Any) -> str:
    """`data-value` text: the unformatted number, so tests and scripts can read it back."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


@cache
def plotly_js_path() -> Path:
    """`plotly.min.js` inside the installed `plotly` package."""
    try:
        path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    except ModuleNotFoundError:
        raise ConfigError("the dashboard needs the plotly package for its charts: "
                          "pip install 'agentkd[dashboard]'") from None
    if not path.is_file():
        raise ConfigError(f"plotly is installed but {path} is missing; reinstall plotly")
    return path


@cache
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["raw"] = raw
    env.globals["nav"] = NAV
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_report(page: Any, *, source: str) -> str:
    """One self-contained HTML file of a `Page`: CSS and chart JS inline, no links out."""
    return render(
        "report.html", page=page, source=source, standalone=True,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        inline_css=(STATIC / "style.css").read_text(encoding="utf-8"),
        # A literal "</script" inside the bundle would end the tag early; plotly has none,
        # but escape it anyway so a future bundle cannot break the report.
        inline_js=plotly_js_path().read_text(encoding="utf-8").replace("</script", "<\\/script"),
    )
