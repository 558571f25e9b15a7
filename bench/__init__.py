"""Benchmarks (bench_*.py) and run_all.py, which runs them all and writes bench/README.md.

Run from the tree's top as modules: ``python -m bench.run_all``, ``python -m bench.bench_agent``.
runs/ holds the longer test runs (soak, crash sweep, fuzz, profiling), lib/ what the
benchmarks share (the cluster generator, the kernel benchmarks' main), report/ the README's
figures, aims and plots.
"""
