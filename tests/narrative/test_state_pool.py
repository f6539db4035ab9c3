"""The host buffers that hold sequence states (`narrative.llm.model._StatePool`): pure Python, no model.

Checkpoints (one size per model) reuse exact sizes; full-state snapshots (sizes grow with the tokens
held) get rounded capacities and reuse a free buffer up to `slack` larger, within a byte limit.
"""

from __future__ import annotations

import pytest

from narrative.llm.model import StateBuffer, _StatePool

MiB = 1 << 20


@pytest.mark.parametrize("size", [1, 4095, 4097, 150 * MiB + 3, 1_234_567_891])
def test_rounded_capacity_is_at_most_6_25_percent_over(size):
    cap = _StatePool.rounded(size)
    assert cap >= size
    assert cap % 4096 == 0
    assert cap <= max(4096, size * 1.0625 + 4096)


def test_exact_pool_reuses_only_the_same_size():
    pool = _StatePool(keep=2)
    a = pool.take(1000)
    assert a.capacity == 1000 and pool.allocated == 1
    a.release()
    b = pool.take(1000)
    assert b is a and pool.reused == 1 and b.refs == 1 and len(b) == 0
    c = pool.take(999)
    assert c is not a and pool.allocated == 2


def test_shared_buffer_returns_to_the_pool_only_when_every_owner_released_it():
    pool = _StatePool(keep=2)
    a = pool.take(64)
    a.share()
    a.release()
    assert pool.take(64) is not a  # still held by its second owner
    a.release()
    assert pool.take(64) is a


def test_snapshot_pool_leaves_headroom_for_a_grown_conversation_and_never_takes_a_smaller_buffer():
    pool = _StatePool(keep=2, slack=0.125, keep_bytes=1 << 30)
    a = pool.take(100 * MiB)
    assert 112.5 * MiB <= a.capacity <= 120 * MiB  # 12.5% headroom, then rounding
    a.release()
    b = pool.take(110 * MiB)  # the next eviction is a conversation a turn longer: fits the headroom
    assert b is a and pool.reused == 1
    b.release()
    c = pool.take(95 * MiB)  # a little smaller: still taken (at most 25% over)
    assert c is a and pool.reused == 2
    c.release()
    d = pool.take(200 * MiB)  # nothing free is large enough
    assert d is not a and d.capacity >= 200 * MiB
    d.release()
    e = pool.take(10 * MiB)  # the free ones are far too large: a new, small one
    assert e.capacity < 12 * MiB and pool.allocated == 3


def test_snapshot_pool_keeps_at_most_keep_bytes_free():
    pool = _StatePool(keep=4, slack=0.125, keep_bytes=250 * MiB)
    bufs = [pool.take(100 * MiB) for _ in range(3)]
    for b in bufs:
        b.release()
    assert pool.free_bytes() <= 250 * MiB
    assert pool.free_bytes() >= 100 * MiB  # some are kept
    none = _StatePool(keep=4, slack=0.125, keep_bytes=0)
    x = none.take(MiB)
    x.release()
    assert none.free_bytes() == 0


def test_a_state_buffer_view_is_its_written_bytes():
    b = StateBuffer(16)
    b.buf[0:3] = [1, 2, 3]
    b.n = 3
    assert bytes(b) == b"\x01\x02\x03" and len(b) == 3 and b.capacity == 16
