"""We test: what the simulated world knows comes from the service and the world itself, never from the reconciler:
its summary counts as leftovers of ours the agents it started or left behind (Simulation.leftovers), whatever their
names, and a world file's demand must be one the service can parse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from azp_simulation.world import Simulation, load_world
from reconciler.errors import ConfigError

DOCKER = {"docker": "/usr/bin/docker", "Agent.OS": "Linux"}


@pytest.fixture
def simulation(tmp_path: Path) -> Iterator[Simulation]:
    world = {
        "name": "leftovers",
        "pools": [{"name": "linux", "templates": [{"name": "default", "capabilities": {"docker": ""}}]}],
        "agents": [
            {"pool": "linux", "name": "azp-build-server", "status": "offline"},
            {"pool": "linux", "name": "old1", "ours": True, "status": "offline"},
        ],
    }
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(world))
    started = Simulation(load_world(path), directory=tmp_path / "run")
    started.start()
    yield started
    started.stop()


def test_leftovers_are_what_the_world_started_or_seeded_as_ours(simulation: Simulation) -> None:
    """We test: a seeded agent that is not ours is no leftover even when its name looks like the product's, an
    agent registered and never run (a placeholder) is none either, whatever its name; the world file's `ours`
    leftover is, and so is an agent whose listener ran, online while it runs and offline after."""
    azdo, pool_id = simulation.azdo, simulation.pool_ids["linux"]
    azdo.add_agent(pool_id, "azp-placeholder-linux-default", capabilities=DOCKER, enabled=False)
    azdo.add_agent(pool_id, "template-agent", capabilities=DOCKER, enabled=False)
    assert simulation.leftovers()["offline_agents"] == 1
    worker = azdo.add_agent(pool_id, "build-7", capabilities=DOCKER)
    azdo.agent_online(worker["id"], once=True)
    left = simulation.leftovers()
    assert (left["online_agents"], left["offline_agents"]) == (1, 1)
    azdo.agent_lost(worker["id"])
    left = simulation.leftovers()
    assert (left["online_agents"], left["offline_agents"]) == (0, 2)


def test_a_demand_the_service_cannot_parse_is_refused_naming_its_key(tmp_path: Path) -> None:
    """We test: a world file's arrival demanding what the service cannot parse (a miscased operator) is refused when
    the file is read, naming arrivals[i].demands[j] and the grammar, before any emulator starts."""
    world = {
        "pools": [{"name": "linux", "templates": [{"name": "default", "capabilities": {"docker": ""}}]}],
        "arrivals": [{"pool": "linux", "demands": ["docker", "java -Equals 17"]}],
    }
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(world))
    with pytest.raises(ConfigError, match=r"arrivals\[0\]\.demands\[1\]: demand 'java -Equals 17' does not parse"):
        load_world(path)
