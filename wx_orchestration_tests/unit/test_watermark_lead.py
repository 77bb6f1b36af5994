"""Our share of the station's Last-Modified lead, and the backlog batches sized by it."""

from __future__ import annotations

from wx_orchestration.core.watermark_lead import LeadPolicy, backlog_batch_rows


def test_backlog_batches_carry_the_calls_of_two_seconds() -> None:
    assert backlog_batch_rows(0.3, items_per_call=100, max_calls=50) == 100
    assert backlog_batch_rows(10.0, items_per_call=100, max_calls=50) == 3000
    assert backlog_batch_rows(1000.0, items_per_call=100, max_calls=50) == 5000
    policy = LeadPolicy(max_lead_s=5.0)
    assert policy.wait_s(own_lead_s=0.0, statements=2) == 0.0
    assert policy.wait_s(own_lead_s=3.5, statements=2) == 1.5  # room for ours and a DJ's
    assert LeadPolicy(max_lead_s=0).wait_s(own_lead_s=60.0, statements=2) == 0.0


def test_a_batch_grows_with_the_rows_each_lookup_serves() -> None:
    from wx_orchestration.core.watermark_lead import grown_batch

    assert grown_batch(1000, rows_seen=0, lookups_seen=0) == 1000
    assert grown_batch(1000, rows_seen=3000, lookups_seen=1000) == 3000
    assert grown_batch(1000, rows_seen=90_000, lookups_seen=100) == 5000
    assert grown_batch(1000, rows_seen=500, lookups_seen=1000) == 1000
