"""Unit tests of the names every object of a release's shard carries (reconciler/names.py)."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from reconciler import names

RELEASES = st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
OWNERS = st.builds(names.Owner, prefix=st.just("azp"), release=RELEASES, shard=st.integers(0, 12))


def test_the_default_release_has_a_stable_tag() -> None:
    """We test: the tag of release azp-agents shard 0 is pinned (a new hash would orphan every object an
    installed release made), and shard 1 of it differs only in the index."""
    zero, one = names.Owner("azp", "azp-agents", 0), names.Owner("azp", "azp-agents", 1)
    assert names.request_job_name(zero, pool_name="linux", request_id=5) == "azp-eeca0-linux-5"
    assert names.placeholder_name(one, pool_name="linux", template="java") == "azp-placeholder-eeca1-linux-java"
    assert names.selector(one).endswith(f",{names.LABEL_SHARD}=1")


@given(OWNERS, OWNERS, st.sampled_from(["linux", "x", "Linux Pool"]), st.integers(1, 2**63 - 1))
def test_no_owner_takes_another_owners_names_for_its_own(
    first: names.Owner, second: names.Owner, pool_name: str, request_id: int
) -> None:
    """We test: for two owners with the same jobNamePrefix (other release or other shard), neither's agent or
    placeholder prefix matches a Job, standby Job or placeholder name of the other, and an owner's placeholder
    prefix never matches its own agents (the tag is hex and digits, never `placeholder`). Two releases whose
    names hash to the same 16 bits would share names: the one case left out (1 pair in 65,536)."""
    assume(first.tag != second.tag)
    theirs = [
        names.request_job_name(second, pool_name=pool_name, request_id=request_id),
        names.standby_job_name(second, pool_name=pool_name, template="default", slot=0),
        names.placeholder_name(second, pool_name=pool_name, template="default"),
    ]
    mine = (names.agent_prefix(first, pool_name=pool_name), names.placeholder_prefix(first, pool_name=pool_name))
    assert not any(name.startswith(mine) for name in theirs), (mine, theirs)
    own_job = names.request_job_name(first, pool_name=pool_name, request_id=request_id)
    assert own_job.startswith(mine[0]) and not own_job.startswith(mine[1])
