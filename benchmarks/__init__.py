"""gpuledger benchmarks: `make bench` (= `python -m benchmarks`).

Each ``bench_*.py`` module here has ``run(quick: bool) -> list[dict]`` returning
rows of measured figures (name, value, unit, and its baseline where the issue
asks for one, measured in the same run). Figures go to the README by hand,
with the date and machine; nothing here asserts a speed.
"""
