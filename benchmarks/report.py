"""The results table: every figure is the median of its runs, next to its baseline and the ratio.

A :class:`Section` is one measurement (its baseline named once); a :class:`Row` one figure with
every run's value for both sides. :func:`render` turns sections, per-process CPU use and notes
into the Markdown written to ``benchmarks/results/latest.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from benchmarks.stack import OTHERS, CpuUse
from benchmarks.stats import median, ratio

__all__ = [
    "Row",
    "Section",
    "Target",
    "format_number",
    "format_ratio",
    "format_series",
    "markdown_table",
    "render",
]


@dataclass(frozen=True)
class Target:
    """A goal for a row's value (or, with ``on_ratio``, for its ratio to the baseline)."""

    op: Literal["<=", ">="]
    threshold: float
    unit: str = ""
    on_ratio: bool = False

    def met(self, value: float, baseline_ratio: float) -> bool | None:
        subject = baseline_ratio if self.on_ratio else value
        if math.isnan(subject):
            return None
        return subject <= self.threshold if self.op == "<=" else subject >= self.threshold

    def __str__(self) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        unit = "x" if self.on_ratio else f" {self.unit}".rstrip()
        return f"{sign} {self.threshold:g}{unit}"


@dataclass(frozen=True)
class Row:
    """One figure: Switchboard's runs and the baseline's runs, in ``unit``."""

    figure: str
    unit: str
    runs: list[float]
    baseline_runs: list[float]
    target: Target | None = None
    at_least: bool = False
    """The value is a lower bound (some requests were still unanswered when time was up)."""

    @property
    def value(self) -> float:
        return median(self.runs)

    @property
    def baseline(self) -> float:
        return median(self.baseline_runs)

    @property
    def ratio(self) -> float:
        return ratio(self.value, self.baseline)

    def cells(self) -> list[str]:
        verdict = ""
        if self.target is not None:
            met = self.target.met(self.value, self.ratio)
            verdict = f"{self.target} {'—' if met is None else '✅' if met else '❌'}"
        prefix = "≥ " if self.at_least else ""
        return [
            self.figure,
            prefix + format_number(self.value, self.unit),
            format_number(self.baseline, self.unit),
            prefix + format_ratio(self.ratio),
            verdict,
            format_series(self.runs),
            format_series(self.baseline_runs),
        ]


@dataclass
class Section:
    """One measurement: what runs on each side, its rows, and notes."""

    title: str
    baseline: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    subject: str = "Switchboard"
    """Heading of the measured side's column."""

    def render(self) -> str:
        header = ["Figure", self.subject, "Baseline", "Ratio", "Target", "Runs", "Baseline runs"]
        lines = [f"## {self.title}", "", f"Baseline: {self.baseline}", ""]
        lines += markdown_table(header, [row.cells() for row in self.rows])
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def render(
    title: str, header_notes: list[str], sections: list[Section], cpu: dict[str, CpuUse]
) -> str:
    """The whole report as Markdown."""
    parts = [f"# {title}", "", *[f"- {note}" for note in header_notes], ""]
    parts += [section.render() for section in sections]
    parts.append(_cpu_table(cpu))
    return "\n".join(parts)


def _cpu_table(cpu: dict[str, CpuUse]) -> str:
    names = sorted({name for use in cpu.values() for name in use.seconds} - {OTHERS})
    header = ["Phase (Switchboard runs)", *names, OTHERS, "busiest"]
    rows = []
    for phase, use in cpu.items():
        percent = use.percent
        rows.append(
            [phase]
            + [f"{percent.get(name, 0.0):.0f}%" for name in [*names, OTHERS]]
            + [use.busiest]
        )
    lines = [
        "## CPU by process (diagnostic, no baseline)",
        "",
        "Percent of one core while Switchboard was measured (the machine has 2 cores: 200%);"
        f" `{OTHERS}` is CPU used by processes outside this benchmark (other people's work).",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, the rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def format_number(value: float, unit: str) -> str:
    """A figure with the digits its size deserves (``12,345``, ``12.3``, ``1.23``), ``—`` if NaN."""
    if math.isnan(value):
        return "—"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def format_ratio(value: float) -> str:
    """A ratio as ``1.23x`` (``123x`` from 100 up), ``—`` if NaN."""
    if math.isnan(value):
        return "—"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def format_series(values: list[float]) -> str:
    """Every run's value, comma-separated, without unit."""
    return ", ".join(format_number(v, "") for v in values)
