"""The project's benchmark, run as ``python scripts/bench.py`` from a checkout (not installed with the package).

Modules: :mod:`benchmarks.timing` (interleaved timing, the machine), :mod:`benchmarks.functions`
(hand-written vs native Functions), :mod:`benchmarks.training` (the Lightning step, start-up, sweeps),
:mod:`benchmarks.report` (every section, the targets, the tables).
"""
