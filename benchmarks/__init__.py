"""gpuledger benchmarks: `make bench` (= `python -m benchmarks`).

Each ``bench_*.py`` module here has ``run(quick: bool) -> list[dict]`` returning
rows of measured figures (and the baselines the issues ask for, measured in
the same run), ``parameters(quick)`` (the sizes), ``UNITS`` (each figure's
unit) and ``TARGETS`` (goals, ``benchmarks.result.Target``). Nothing here
asserts a speed.

``python -m benchmarks --json DIR`` writes one JSON result per benchmark
(``benchmarks/result.py`` has the schema); the runs kept in
``benchmarks/results/`` generate ``docs/benchmarks.md`` and the README's status
table (``python -m benchmarks.report``, ``make bench-doc``), and a test checks
that both equal what the generator makes of the stored runs.
"""
