"""KEDA's own azure-pipelines scaler in the benchmarks, beside the re-implemented KEDA policy.

`.tools/bin/keda-harness` (benchmarks/keda/main.go, built by scripts/build-keda-harness.sh, never by
`make test`) builds one scaler per ScaledJob with KEDA's NewAzurePipelinesScaler and calls its
GetMetricsAndActivity once per pollingInterval, against whatever URL it is given: here the Azure
DevOps emulator of the benchmark's world. `keda_scalers` runs it for the life of a `with` block and
hands back the polls it printed (one dict per poll)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HARNESS = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "keda-harness"
BUILD_SCRIPT = "scripts/build-keda-harness.sh"
_PAT_ENV = "AZP_KEDA_PAT"


class HarnessError(RuntimeError):
    """The harness refused its configuration or ended badly; the message carries its stderr."""


def available() -> bool:
    """Whether the harness is built."""
    return os.access(HARNESS, os.X_OK)


def scaled_jobs(pools: Mapping[str, Mapping[str, Mapping[str, str]]]) -> list[dict[str, Any]]:
    """One ScaledJob per job template, as KEDA needs: pool name -> template name -> the capabilities its
    agents advertise. Each lists those capabilities as its `demands`, so the scaler counts the queued
    requests an agent of that template could run (keda-docs, scalers/azure-pipelines.md, "demands")."""
    return [
        {"name": f"{pool}-{template}", "metadata": {"poolName": pool, "demands": ",".join(sorted(capabilities))}}
        for pool, templates in pools.items()
        for template, capabilities in templates.items()
    ]


@contextmanager
def keda_scalers(
    *, organization: str, pat: str, jobs: Sequence[Mapping[str, Any]], polling_interval: float
) -> Iterator[list[dict[str, Any]]]:
    """Run the harness over `jobs` until the block ends; the yielded list fills with its polls."""
    config = {"organizationURL": organization, "pollingInterval": polling_interval, "scaledJobs": list(jobs)}
    process = subprocess.Popen(
        [str(HARNESS), "-pat-env", _PAT_ENV],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, _PAT_ENV: pat},
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(json.dumps(config))
    process.stdin.close()
    polls: list[dict[str, Any]] = []
    errors: list[str] = []
    stdout, stderr = process.stdout, process.stderr
    readers = [
        threading.Thread(target=lambda: polls.extend(json.loads(line) for line in stdout), daemon=True),
        threading.Thread(target=lambda: errors.extend(stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        yield polls
    finally:
        process.terminate()
        process.wait(timeout=30)
        for reader in readers:
            reader.join(timeout=10)
    if process.returncode != 0:
        raise HarnessError(f"keda-harness exited {process.returncode}: {''.join(errors).strip()[-2000:]}")
