"""Latency samples and what the reports say about them (percentiles, a CDF)."""

from __future__ import annotations

from array import array

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def us_per_call(cpu_seconds: float, calls: int) -> float:
    """CPU microseconds per call: what one call cost a process (0.0 when nothing was called)."""
    return cpu_seconds * 1e6 / calls if calls else 0.0


class Latencies:
    """Latencies of one run in nanoseconds, appended by the load loop (an array: no object per sample)."""

    def __init__(self) -> None:
        self.samples_ns = array("q")

    def add(self, ns: int) -> None:
        self.samples_ns.append(ns)

    def __len__(self) -> int:
        return len(self.samples_ns)

    def ms(self) -> np.ndarray:
        return np.frombuffer(self.samples_ns, dtype=np.int64).astype(np.float64) / 1e6

    def summary(self) -> dict[str, float]:
        """p50/p90/p99/p99.9, mean and max in milliseconds (zeros when nothing was measured)."""
        if not self.samples_ns:
            return {
                "p50_ms": 0.0,
                "p90_ms": 0.0,
                "p99_ms": 0.0,
                "p99_9_ms": 0.0,
                "mean_ms": 0.0,
                "max_ms": 0.0,
            }
        ms = self.ms()
        values = np.percentile(ms, PERCENTILES)
        out = {
            f"p{str(p).rstrip('0').rstrip('.').replace('.', '_')}_ms": round(float(v), 3)
            for p, v in zip(PERCENTILES, values, strict=True)
        }
        out["mean_ms"] = round(float(ms.mean()), 3)
        out["max_ms"] = round(float(ms.max()), 3)
        return out

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """(latency ms, fraction of calls at or below it), log-spaced in the tail, for plots and the JSON."""
        if not self.samples_ns:
            return []
        ms = np.sort(self.ms())
        fractions = 1.0 - np.logspace(0, -4, points)  # 0 .. 0.9999, dense near the tail
        fractions = np.append(fractions, 1.0)
        index = np.minimum((fractions * (len(ms) - 1)).astype(int), len(ms) - 1)
        return [(round(float(ms[i]), 4), round(float(f), 6)) for i, f in zip(index, fractions, strict=True)]
