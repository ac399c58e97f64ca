"""Suite-wide collection rules.

`make test` runs the suite with pytest-xdist (`--dist loadgroup`): most simulation tests wait on
simulated time, so workers overlap their waits. Each test module stays on one worker, so its
module-scoped worlds are built once, and the realkube tier shares one worker and its one control plane.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = "tests/realkube" if path.startswith("tests/realkube/") else path
        item.add_marker(pytest.mark.xdist_group(group))
