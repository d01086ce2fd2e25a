"""A line plot as SVG with no dependencies, for machines without matplotlib (the lent GPUs' images)."""
from __future__ import annotations

from html import escape

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def svg_lines(series: dict[str, list[tuple[float, float, str]]], xlabel: str, ylabel: str, title: str,
              width: int = 640, height: int = 420) -> str:
    """series: label -> [(x, y, point label)] -> an SVG document with axes from 0, ticks and a legend."""
    pts = [(x, y) for s in series.values() for x, y, _ in s]
    xmax = max((x for x, _ in pts), default=1.0) * 1.1 or 1.0
    ymax = max((y for _, y in pts), default=1.0) * 1.1 or 1.0
    left, right, top, bottom = 70, 20, 50, 50
    w, h = width - left - right, height - top - bottom

    def px(x, y):
        return left + w * x / xmax, top + h * (1 - y / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, line in enumerate(title.splitlines()):
        out.append(f'<text x="{width / 2}" y="{16 + 13 * i}" font-size="11" text-anchor="middle">{escape(line)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="black"/>')
    for k in range(6):
        xv, yv = xmax * k / 5, ymax * k / 5
        x0, _ = px(xv, 0)
        _, y0 = px(0, yv)
        out.append(f'<text x="{x0}" y="{top + h + 15}" font-size="10" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{left - 5}" y="{y0 + 3}" font-size="10" text-anchor="end">{yv:.1f}</text>')
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y0}" y2="{y0}" stroke="#ddd"/>')
    out.append(f'<text x="{left + w / 2}" y="{height - 10}" font-size="12" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="15" y="{top + h / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 15 {top + h / 2})">{escape(ylabel)}</text>')
    for i, (label, s) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        xy = [px(x, y) for x, y, _ in s]
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in xy) + '"/>')
        for (a, b), (_, _, name) in zip(xy, s):
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"/>')
            out.append(f'<text x="{a + 4:.1f}" y="{b - 4:.1f}" font-size="9">{escape(name)}</text>')
        out.append(f'<text x="{left + 10}" y="{top + 15 + 14 * i}" font-size="11" fill="{c}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
