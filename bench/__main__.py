"""``python -m bench SCENARIO``: the same commands as ``flashsale bench``."""

from bench.cli import bench

bench(prog_name="python -m bench")
