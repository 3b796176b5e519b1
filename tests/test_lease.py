"""Leases (dynocc_data.storage.lease) on a local folder and on a real S3-compatible server (moto) on localhost.

Time is a fake clock where staleness matters, so no test sleeps for a ttl.
"""

from __future__ import annotations

import threading

import pytest

from dynocc_data import storage
from dynocc_data.storage.lease import acquire, lease_info

pytest_plugins = ["s3_server"]


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket") + "/run"


def test_a_live_lease_refuses_others_and_a_silent_one_is_taken_over(root):
    clock = Clock()
    first = acquire(root, "c00001", "rank-a", ttl=10.0, clock=clock)
    assert first is not None and first.generation == 0
    assert lease_info(root, "c00001").owner == "rank-a"
    clock.now += 9.0
    assert acquire(root, "c00001", "rank-b", ttl=10.0, clock=clock) is None  # not stale yet
    assert first.renew()  # a heartbeat at t+9 ...
    clock.now += 9.0
    assert acquire(root, "c00001", "rank-b", ttl=10.0, clock=clock) is None  # ... keeps it past t+10
    clock.now += 10.5  # silent for more than the ttl
    second = acquire(root, "c00001", "rank-b", ttl=10.0, clock=clock)
    assert second is not None and second.generation == 1
    info = lease_info(root, "c00001")
    assert (info.generation, info.owner, info.renewed) == (1, "rank-b", clock.now)
    assert first.renew() is False and first.lost.is_set()  # the old holder learns it lost, and writes nothing
    assert lease_info(root, "c00001").owner == "rank-b"
    assert second.renew()
    assert acquire(root, "other", "rank-a", ttl=10.0, clock=clock).generation == 0  # leases are independent
    again = acquire(root, "c00001", "rank-b", ttl=10.0, clock=clock)  # a restarted rank-b takes its own back at once
    assert again is not None and again.generation == 2 and second.renew() is False


def test_exactly_one_of_racing_claimers_wins_creation_and_takeover(root):
    clock = Clock()
    for expected_generation in (0, 1):
        winners: list = []
        barrier = threading.Barrier(6)

        def claim(i: int) -> None:
            barrier.wait()
            lease = acquire(root, "c00007", f"claimer-{i}", ttl=5.0, clock=clock)
            if lease is not None:
                winners.append(lease)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert winners[0].generation == expected_generation
        assert lease_info(root, "c00007").owner == winners[0].owner
        clock.now += 6.0  # the winner stays silent: the next round takes it over
    names = [n for n in storage.list_names(root) if n.startswith("lease-c00007-")]
    assert names == ["lease-c00007-000000.json", "lease-c00007-000001.json"]


def test_heartbeat_thread_keeps_renewing_until_stopped(root):
    lease = acquire(root, "beat", "me", ttl=0.3)
    assert lease is not None
    first = lease_info(root, "beat").renewed
    with lease:
        for _ in range(100):  # heartbeats every 0.1 s; wait for one, without asserting on timing
            if lease_info(root, "beat").renewed > first:
                break
            threading.Event().wait(0.05)
    assert lease_info(root, "beat").renewed > first
    assert not lease.lost.is_set()


def test_unreadable_lease_counts_as_stale(root):
    storage.makedirs(root)
    storage.write_atomic(storage.join(root, "lease-bad-000004.json"), "not json")
    lease = acquire(root, "bad", "me", ttl=5.0)
    assert lease is not None and lease.generation == 5
