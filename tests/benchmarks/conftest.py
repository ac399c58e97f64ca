"""The benchmarks are run from the repository root (`python -m benchmarks`) and not installed; tests
that import them directly find them from there."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
