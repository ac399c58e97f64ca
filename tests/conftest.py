"""Suite-wide rules: how `make test` shares the suite among pytest-xdist workers.

Most simulation tests wait on simulated time, so `make test` runs them on several workers that overlap their
waits. Each test module stays on one worker (its module-scoped worlds are built once, and its closing
"did every case run" test sees the whole module), and the realkube tier shares one worker and so one control
plane. This is xdist's scheduling by scope with our own scopes: its `loadgroup` mode cannot be used, as it
renames tests through a node attribute pytest 9.2 no longer reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reconciler import logs


@pytest.fixture(autouse=True)
def _secrets_masked_per_test() -> Iterator[None]:
    """Forget the secrets a test taught the reconciler's log filter (a process-wide list, as in one run): a unit
    test's one-letter PAT "p" would otherwise mask every "p" in the logs of later tests in the same worker."""
    before = list(logs.SECRETS.secrets)
    yield
    logs.SECRETS.secrets = before


def scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the whole realkube tier."""
    path = nodeid.split("::", 1)[0]
    return "tests/realkube" if path.startswith("tests/realkube/") else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ByModule(config, log)
