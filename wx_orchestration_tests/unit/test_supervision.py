"""When a failed role is restarted, and when the sidecar gives up on it."""

from wx_orchestration.core.supervision import FailureWindow, RestartPolicy


def test_the_backoff_doubles_with_recent_failures_up_to_the_cap() -> None:
    window = FailureWindow(RestartPolicy(max_failures=100, base_s=1, cap_s=5))
    delays = []
    for n in range(5):
        window.record(float(n))
        delays.append(window.delay_s(rng=lambda: 1.0))
    assert delays == [1, 2, 4, 5, 5]
    # Full jitter: anywhere from nothing up to the bound.
    assert window.delay_s(rng=lambda: 0.25) == 1.25


def test_a_role_gives_up_at_the_nth_failure_within_the_window_only() -> None:
    window = FailureWindow(RestartPolicy(max_failures=3, window_s=60))
    assert not window.record(0)
    assert not window.record(10)
    # The first has left the window: still two.
    assert not window.record(61)
    assert window.record(62)


def test_failures_long_ago_do_not_lengthen_the_backoff() -> None:
    window = FailureWindow(RestartPolicy(max_failures=10, window_s=60, base_s=1, cap_s=30))
    for n in range(4):
        window.record(float(n))
    window.record(1000.0)
    assert window.delay_s(rng=lambda: 1.0) == 1
