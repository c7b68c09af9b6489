"""pytest-benchmark suite: `pytest benchmarks --benchmark-json=out.json` (see conftest.py)."""
