"""We test: the values table of chart/README.md is what readme-generator makes from values.yaml now."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from chart_helpers import CHART, REPO, have_readme_generator


@pytest.mark.skipif(not have_readme_generator(), reason="run scripts/fetch-tools.sh to install readme-generator")
def test_readme_values_table_is_up_to_date(tmp_path: Path) -> None:
    """We test: regenerating the README on a copy changes nothing."""
    readme = tmp_path / "README.md"
    shutil.copy(CHART / "README.md", readme)
    generator = REPO / ".tools" / "node" / "node_modules" / ".bin" / "readme-generator"
    completed = subprocess.run(
        [str(generator), "-v", str(CHART / "values.yaml"), "-r", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert readme.read_text(encoding="utf-8") == (CHART / "README.md").read_text(encoding="utf-8"), (
        "chart/README.md is stale: run .tools/node/node_modules/.bin/readme-generator "
        "-v chart/values.yaml -r chart/README.md"
    )


def test_readme_documents_every_parameter() -> None:
    """We test: every `## @param` of values.yaml appears in the README table."""
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    values = (CHART / "values.yaml").read_text(encoding="utf-8")
    params = [line.split()[2] for line in values.splitlines() if line.strip().startswith("## @param ")]
    assert [p for p in params if f"`{p}`" not in readme] == []
