"""Shared fixtures. Tests make their own tiny data; nothing here reads ../shared."""
from __future__ import annotations

import os

# Two CPU cores on CI, two pytest workers: one intra-op thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SIGHTLINE_TEST", "1")
