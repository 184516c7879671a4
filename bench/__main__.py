"""``python -m flashsale.bench SCENARIO``: the same commands as ``flashsale bench``."""

from flashsale.bench.cli import bench

bench(prog_name="python -m flashsale.bench")
