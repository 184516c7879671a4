"""flashsale's benchmark harness: load scenarios run side by side with their ceilings and baselines.

Every scenario writes JSON (machine, versions, settings, every figure), a Markdown table and PNG plots to
``bench/results/``. Run one with ``flashsale bench SCENARIO`` or ``python -m bench SCENARIO``; see
``bench/README.md``.
"""
