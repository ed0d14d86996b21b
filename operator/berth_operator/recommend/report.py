"""What `berth recommend` prints and writes: the table, the Model and EndpointConfig to apply, and
an HTML page of the curves (inline SVG, no scripts)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import yaml

from ..api import API_VERSION, EndpointConfig, Model
from .search import Outcome

HEADERS = (
    "candidate",
    "max rps",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "at conc.",
    "replicas",
    "$/hour",
    "$/1M inf.",
    "notes",
)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for o in outcomes:
        best = o.best
        notes = list(o.notes)
        if not o.fits_memory:
            notes.append(f"peak RSS {o.peak_rss_bytes} B over the type's memory")
        if best is None:
            notes.append(f"no load level kept p99 within {o.p99_target_ms:g} ms")
        table.append(
            (
                o.candidate.label,
                f"{best.rps:,.0f}" if best else "-",
                f"{best.p50_ms:.2f}" if best else "-",
                f"{best.p95_ms:.2f}" if best else "-",
                f"{best.p99_ms:.2f}" if best else "-",
                str(best.concurrency) if best else "-",
                str(o.replicas) if o.replicas is not None else "-",
                _money(o.cost_per_hour),
                _money(o.cost_per_million),
                "; ".join(notes),
            )
        )
    return table


def table(outcomes: Sequence[Outcome]) -> str:
    body = rows(outcomes)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


def manifests(chosen: Outcome, model_name: str, model_uri: str, config_name: str) -> str:
    """The Model (with the runtime settings measured) and the EndpointConfig to apply; both are
    validated with the API types, as admission would."""
    candidate = chosen.candidate
    assert chosen.replicas is not None
    model: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Model",
        "metadata": {"name": model_name},
        "spec": {
            "modelUri": model_uri,
            "runtime": {
                "maxBatchSize": candidate.max_batch_size,
                "intraOpThreads": candidate.intra_op_threads,
            },
        },
    }
    config: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "EndpointConfig",
        "metadata": {"name": config_name},
        "spec": {
            "productionVariants": [
                {
                    "variantName": "main",
                    "modelName": model_name,
                    "instanceType": candidate.instance_type,
                    "initialInstanceCount": chosen.replicas,
                    "initialVariantWeight": 1,
                }
            ]
        },
    }
    Model.model_validate(model)
    EndpointConfig.model_validate(config)
    return yaml.safe_dump_all([model, config], sort_keys=False)


def _polyline(points: list[tuple[float, float]], scale_x: float, scale_y: float, height: int) -> str:
    return " ".join(f"{40 + x * scale_x:.1f},{height - 30 - y * scale_y:.1f}" for x, y in points)


def html_report(outcomes: Sequence[Outcome], title: str) -> str:
    """Throughput and p99 against concurrency, one line per candidate."""
    width, height = 640, 320
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    charts = []
    for metric, unit in (("rps", "requests/s"), ("p99_ms", "p99 ms")):
        series = [
            [
                (float(i), float(getattr(s, metric)))
                for i, s in enumerate(o.steps)
                if getattr(s, metric) != float("inf")
            ]
            for o in outcomes
        ]
        top = max((y for points in series for _, y in points), default=1.0) or 1.0
        steps = max((len(o.steps) for o in outcomes), default=1)
        scale_x = (width - 60) / max(1, steps - 1)
        scale_y = (height - 60) / top
        lines = [
            f'<polyline fill="none" stroke="{colours[i % len(colours)]}" stroke-width="2" '
            f'points="{_polyline(points, scale_x, scale_y, height)}"/>'
            for i, points in enumerate(series)
        ]
        labels = [
            f'<text x="{40 + i * scale_x:.1f}" y="{height - 10}" font-size="11">{1 << i}</text>'
            for i in range(steps)
        ]
        charts.append(
            f"<h2>{html.escape(unit)} against concurrency</h2>"
            f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="4" y="16" font-size="11">max {top:,.1f}</text>{"".join(lines)}{"".join(labels)}</svg>'
        )
    legend = "".join(
        f'<li style="color:{colours[i % len(colours)]}">{html.escape(o.candidate.label)}</li>'
        for i, o in enumerate(outcomes)
    )
    rows_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows(outcomes)
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{legend}</ul>{''.join(charts)}"
        f"<table border='1' cellpadding='4'><tr>{head}</tr>{rows_html}</table></body></html>"
    )
