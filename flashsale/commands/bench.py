"""``flashsale bench SCENARIO``: the benchmark harness of ``bench/`` (see bench/README.md)."""

from bench.cli import bench

__all__ = ["bench"]
