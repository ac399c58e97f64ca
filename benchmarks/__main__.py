"""`python -m benchmarks [--size tiny|full] [--only NAME]`: run the benchmarks of issue 8, print one
table with each target beside its figure (met / not met), and write benchmarks/results.json."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

BENCHMARKS = ("api_cost", "scale", "latency", "cold_start", "hooks", "standby")
RESULTS = Path(__file__).with_name("results.json")


def _commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return completed.stdout.strip() or None


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "-"}[met]


def print_table(results: Sequence[dict[str, Any]], stream: TextIO) -> None:
    """One row per target: benchmark, what is measured, the target, the figure, met or not."""
    rows = [("benchmark", "measure", "target", "measured", "verdict")]
    for result in results:
        for check in result.get("checks", []):
            rows.append((result["name"], check["name"], check["target"], check["value"], _verdict(check["met"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        stream.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
        if index == 0:
            stream.write("  ".join("-" * width for width in widths) + "\n")
    for result in results:
        for note in result.get("notes", []):
            stream.write(f"note ({result['name']}): {note}\n")
    stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for name in chosen:
        print(f"running {name} ({args.size}) ...", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        result: dict[str, Any] = module.run(args.size)
        print(f"  {name}: {result['seconds']} s", flush=True)
        results.append(result)
    document = {
        "size": args.size,
        "commit": _commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print_table(results, sys.stdout)
    print(f"\n{args.size} run took {document['seconds']} s; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
