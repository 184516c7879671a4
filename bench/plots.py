"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"flashsale": "#1f77b4", "baseline": "#d62728"}


def _save(fig: Any, results_dir: Path, name: str) -> str:
    results_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(results_dir / name, dpi=110)
    plt.close(fig)
    return name


def by_concurrency(series: dict[str, list[dict[str, Any]]], title: str, results_dir: Path, name: str) -> str:
    """Throughput and p99 against concurrent clients, one line per system."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, levels in series.items():
        x = [level["clients"] for level in levels]
        colour = COLOURS.get(label.split()[0].rstrip(","))
        left.plot(x, [level["attempts_per_s"] for level in levels], "o-", label=label, color=colour)
        right.plot(x, [level["latency"]["p99_ms"] for level in levels], "o-", label=label, color=colour)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    left.set_ylabel("attempts per second")
    left.set_title("Throughput")
    right.set_yscale("log")
    right.set_ylabel("p99 latency (ms, log scale)")
    right.set_title("p99 latency")
    fig.suptitle(title)
    return _save(fig, results_dir, name)


def latency_cdf(cdfs: dict[str, list[tuple[float, float]]], title: str, results_dir: Path, name: str) -> str:
    """Fraction of calls answered within a latency, tail stretched (y = 1 - fraction, log scale)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    # One colour per system when systems are compared; otherwise matplotlib's cycle tells the lines apart.
    by_system = len({label.split()[0].rstrip(",") for label in cdfs}) > 1
    for label, points in cdfs.items():
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [max(1.0 - p[1], 1e-5) for p in points]
        colour = COLOURS.get(label.split()[0].rstrip(",")) if by_system else None
        ax.plot(xs, ys, label=label, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.set_yticks([1, 0.1, 0.01, 0.001, 0.0001])
    ax.set_yticklabels(["p0", "p90", "p99", "p99.9", "p99.99"])
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("percentile")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, results_dir, name)


def hot_sku(figures: dict[str, Any], results_dir: Path) -> list[str]:
    levels = figures["levels"]
    return [
        by_concurrency(
            {"flashsale (engine, asyncio)": levels},
            "Hot SKU at engine level",
            results_dir,
            "hot-sku-concurrency.png",
        ),
        latency_cdf(
            {f"flashsale, {c} clients": points for c, points in figures["cdf"].items()},
            "Hot SKU reserve latency",
            results_dir,
            "hot-sku-latency-cdf.png",
        ),
    ]


def over_time(
    panels: dict[str, list[tuple[float, float]]],
    title: str,
    results_dir: Path,
    name: str,
    marker: float | None,
) -> str:
    """One panel per series (their units differ) on a shared time axis; ``marker``: a moment to show."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    for ax, (label, points) in zip(axes[:, 0], panels.items(), strict=True):
        ax.plot([p[0] for p in points], [p[1] for p in points], color=COLOURS["flashsale"])
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if marker is not None:
            ax.axvline(marker, color="grey", linestyle="--", linewidth=1)
    axes[-1, 0].set_xlabel("seconds since the load started (dashed: load stops)")
    fig.suptitle(title)
    return _save(fig, results_dir, name)


def bars(rates: dict[str, float], p99s: dict[str, float], title: str, results_dir: Path, name: str) -> str:
    """Requests per second and p99 latency per run, side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    labels = list(rates)
    left.bar(labels, [rates[k] for k in labels], color=COLOURS["flashsale"])
    left.set_ylabel("requests per second")
    right.bar(labels, [p99s[k] for k in labels], color=COLOURS["baseline"])
    right.set_ylabel("p99 latency (ms)")
    for ax, values in ((left, rates), (right, p99s)):
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_ylim(0, max(values.values(), default=1) * 1.15)
        for i, k in enumerate(labels):
            ax.annotate(
                f"{values[k]:,.1f}" if values[k] < 100 else f"{values[k]:,.0f}",
                (i, values[k]),
                ha="center",
                va="bottom",
            )
    fig.suptitle(title)
    return _save(fig, results_dir, name)
