"""Benchmarks: scripts run from the repository (`.venv/bin/python bench/NAME.py`), see README.md."""
