"""Benchmarks: scripts run from the repository (`.venv/bin/python bench/NAME.py`), see README.md."""

from __future__ import annotations

from pathlib import Path

from kiln.image.signing import generate_keypair


def bench_keys(work: Path) -> Path:
    """The benchmarks' signing key pair in `work/keys` (made once); returns the .key path."""
    keys = work / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    if not (keys / "bench.key").exists():
        generate_keypair(keys / "bench.key", keys / "bench.pub")
    return keys / "bench.key"
