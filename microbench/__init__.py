"""pytest-benchmark suite: `pytest microbench --benchmark-json=out.json` (see conftest.py)."""
