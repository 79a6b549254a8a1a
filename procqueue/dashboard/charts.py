"""Inline SVG charts rendered on the server: no chart library, no script.

Colours are SVG presentation attributes (not `style=`), so the strict
Content-Security-Policy (style-src 'self') does not block them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from markupsafe import Markup, escape

from procqueue.dashboard.store import Bucket

WIDTH = 560
HEIGHT = 140
PAD_LEFT = 44
PAD_BOTTOM = 20
PAD_TOP = 8
SERIES = (("succeeded", "#2e7d32"), ("retried", "#f9a825"), ("failed", "#c62828"))


class Timed(Protocol):
    @property
    def start(self) -> datetime: ...


def _label(bucket: Timed, with_date: bool) -> str:
    return bucket.start.strftime("%m-%d %H:%M" if with_date else "%H:%M")


def _frame(title: str, top_label: str, buckets: Sequence[Timed], with_date: bool) -> list[str]:
    plot_bottom = HEIGHT - PAD_BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{plot_bottom}" x2="{WIDTH}" y2="{plot_bottom}" '
        'stroke="#888" stroke-width="1"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{plot_bottom}" '
        'stroke="#888" stroke-width="1"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end" font-size="10" '
        f'fill="#555">{escape(top_label)}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{plot_bottom}" text-anchor="end" font-size="10" '
        'fill="#555">0</text>',
    ]
    if buckets:
        parts.append(
            f'<text x="{PAD_LEFT}" y="{HEIGHT - 4}" font-size="10" fill="#555">'
            f"{escape(_label(buckets[0], with_date))}</text>"
        )
        parts.append(
            f'<text x="{WIDTH}" y="{HEIGHT - 4}" text-anchor="end" font-size="10" fill="#555">'
            f"{escape(_label(buckets[-1], with_date))}</text>"
        )
    return parts


def throughput_chart(buckets: Sequence[Bucket], title: str, with_date: bool = False) -> Markup:
    """Stacked bars per bucket: succeeded, retried and failed attempts."""
    peak = max((bucket.attempts for bucket in buckets), default=0)
    parts = _frame(title, str(peak), buckets, with_date)
    plot_height = HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = (WIDTH - PAD_LEFT) / max(len(buckets), 1)
    for index, bucket in enumerate(buckets):
        x = PAD_LEFT + index * slot + 0.5
        y = float(HEIGHT - PAD_BOTTOM)
        tip = (
            f"{_label(bucket, with_date)}: {bucket.succeeded} succeeded, "
            f"{bucket.retried} retried, {bucket.failed} failed"
        )
        parts.append(f"<g><title>{escape(tip)}</title>")
        for name, colour in SERIES:
            count = getattr(bucket, name)
            if not count or not peak:
                continue
            height = count / peak * plot_height
            y -= height
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(slot - 1, 1):.1f}" '
                f'height="{height:.1f}" fill="{colour}"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def error_rate_chart(buckets: Sequence[Bucket], title: str, with_date: bool = False) -> Markup:
    """A line of the share of failed attempts per bucket (gaps where nothing ran)."""
    parts = _frame(title, "100%", buckets, with_date)
    plot_height = HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = (WIDTH - PAD_LEFT) / max(len(buckets), 1)
    points: list[str] = []
    for index, bucket in enumerate(buckets):
        rate = bucket.error_rate
        x = PAD_LEFT + (index + 0.5) * slot
        if rate is None:
            if len(points) > 1:
                parts.append(_polyline(points))
            points = []
            continue
        y = HEIGHT - PAD_BOTTOM - rate * plot_height
        points.append(f"{x:.1f},{y:.1f}")
        tip = f"{_label(bucket, with_date)}: {rate:.0%} of {bucket.attempts} attempts failed"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#c62828">'
            f"<title>{escape(tip)}</title></circle>"
        )
    if len(points) > 1:
        parts.append(_polyline(points))
    parts.append("</svg>")
    return Markup("".join(parts))


def _polyline(points: list[str], colour: str = "#c62828") -> str:
    return (
        f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
    )


@dataclass(frozen=True)
class Line:
    """One series of a line chart: its name, colour and a value per bucket (None: a gap)."""

    name: str
    colour: str
    values: Sequence[float | None]


def line_chart(
    buckets: Sequence[Timed],
    lines: Sequence[Line],
    title: str,
    show: Callable[[float], str],
    with_date: bool = False,
) -> Markup:
    """Lines over the buckets (gaps where a value is None) and, per bucket, a
    full-height hover area whose tooltip gives the bucket's time and every value."""
    peak = max((v for line in lines for v in line.values if v is not None), default=0.0)
    parts = _frame(title, show(peak), buckets, with_date)
    plot_height = HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = (WIDTH - PAD_LEFT) / max(len(buckets), 1)

    def y_of(value: float) -> float:
        return HEIGHT - PAD_BOTTOM - (value / peak * plot_height if peak else 0.0)

    for line in lines:
        points: list[str] = []
        for index, value in enumerate([*line.values, None]):
            if value is None:
                if len(points) > 1:
                    parts.append(_polyline(points, line.colour))
                elif points:  # a lone value: a dot
                    x, y = points[0].split(",")
                    parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{line.colour}"/>')
                points = []
                continue
            points.append(f"{PAD_LEFT + (index + 0.5) * slot:.1f},{y_of(value):.1f}")
    for index, bucket in enumerate(buckets):
        values = ", ".join(
            f"{line.name} {'-' if line.values[index] is None else show(line.values[index] or 0.0)}"
            for line in lines
        )
        parts.append(
            f'<rect class="hit" x="{PAD_LEFT + index * slot:.1f}" y="{PAD_TOP}" '
            f'width="{slot:.1f}" height="{plot_height}" fill="#000" fill-opacity="0">'
            f"<title>{escape(f'{_label(bucket, with_date)}: {values}')}</title></rect>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
