"""PortPool (table 2 in memory): leasing, thread reuse, recycling order, lease numbers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chmail.chserver.ports import Grant, PortPool

DAY = 86400


def alloc(
    pool: PortPool, mid: str, now: int, thread: tuple[str, ...] = (), login: str = "alice"
) -> Grant:
    return pool.alloc(
        login=login, host="ch.test", message_id=mid, recipients=["b@x.y"], thread=thread, now=now
    )


def test_fresh_ports_first_then_oldest_recycled() -> None:
    """Unused ports go first (lowest first); then the least recently used lease is recycled."""
    pool = PortPool(100, 102, lease_seconds=30 * DAY)
    grants = [alloc(pool, f"<m{i}@x>", now=i) for i in range(3)]
    assert [g.lease.port for g in grants] == [100, 101, 102]
    alloc(pool, "<r@x>", now=10, thread=("<m0@x>",))  # refreshes port 100
    recycled = alloc(pool, "<m3@x>", now=11)
    assert recycled.lease.port == 101
    assert recycled.recycled_from == grants[1].lease.lease
    assert recycled.lease.lease > max(g.lease.lease for g in grants)
    assert recycled.lease.message_ids == ("<m3@x>",)


def test_thread_reuse_only_for_same_login_and_live_lease() -> None:
    """A thread reuses only its sender's own live lease."""
    pool = PortPool(100, 110, lease_seconds=10)
    first = alloc(pool, "<a@x>", now=0)
    assert alloc(pool, "<b@x>", now=1, thread=("<a@x>",)).lease.port == first.lease.port
    assert alloc(pool, "<c@x>", now=2, thread=("<a@x>",), login="bob").lease.port != 100
    late = alloc(pool, "<d@x>", now=100, thread=("<a@x>",))
    assert late.lease.port != first.lease.port


def test_same_message_twice_gets_the_same_lease() -> None:
    """Retrying an alloc for the same Message-ID returns the same port and lease."""
    pool = PortPool(100, 110, lease_seconds=10)
    a = alloc(pool, "<a@x>", now=0)
    b = alloc(pool, "<a@x>", now=1)
    assert (a.lease.port, a.lease.lease) == (b.lease.port, b.lease.lease)


def test_numbering_resumes_above_reserved() -> None:
    """After a restart, lease numbers continue above both stored leases and the reservation."""
    pool = PortPool(100, 101, lease_seconds=10)
    a = alloc(pool, "<a@x>", now=0)
    again = PortPool(100, 101, lease_seconds=10, leases=[a.lease], lease_reserved=500)
    assert again.needs_reservation()
    assert alloc(again, "<b@x>", now=1).lease.lease == 501
    assert again.get(100) == a.lease


@given(
    ops=st.lists(
        st.tuples(st.integers(0, 30), st.lists(st.integers(0, 30), max_size=3), st.integers(0, 2)),
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_pool_invariants(ops: list[tuple[int, list[int], int]]) -> None:
    """Any alloc sequence keeps ports in range, one lease per port, numbers never reused."""
    pool = PortPool(100, 104, lease_seconds=50)
    seen_numbers: dict[int, int] = {}  # lease number -> port
    for now, (mid, thread, who) in enumerate(ops):
        g = pool.alloc(
            login=f"u{who}",
            host="ch.test",
            message_id=f"<m{mid}@x>",
            recipients=["b@x.y"],
            thread=[f"<m{t}@x>" for t in thread],
            now=now,
        )
        assert 100 <= g.lease.port <= 104
        assert seen_numbers.setdefault(g.lease.lease, g.lease.port) == g.lease.port
        assert f"<m{mid}@x>" in g.lease.message_ids
        assert len(pool) <= pool.size
        leases = pool.leases()
        assert len({x.port for x in leases}) == len(leases)
        for x in leases:  # the per-login index agrees with the leases
            assert x in pool.leases_of(x.login)
        assert sum(len(pool.leases_of(f"u{w}")) for w in range(3)) == len(leases)
