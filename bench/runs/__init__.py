"""Longer runs of what the tests check, and profiles: ``python -m bench.runs.soak`` etc."""
