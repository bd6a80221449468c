from plugboard.runtime.restart import RestartTracker


def test_backoff_doubles_and_resets_after_a_good_start() -> None:
    tracker = RestartTracker("on-failure", base_delay=0.5, max_delay=4, flap_limit=100)
    delays = [tracker.on_exit(float(t), failed=True, requested=False).delay for t in range(6)]
    assert delays == [0.5, 1, 2, 4, 4, 4]
    tracker.started_ok()
    assert tracker.on_exit(10.0, failed=True, requested=False).delay == 0.5


def test_policies() -> None:
    assert not RestartTracker("never").on_exit(0, failed=True, requested=False).restart
    assert not RestartTracker("on-failure").on_exit(0, failed=False, requested=False).restart
    assert RestartTracker("on-failure").on_exit(0, failed=True, requested=False).restart
    assert RestartTracker("always").on_exit(0, failed=False, requested=False).restart


def test_a_requested_stop_is_never_restarted() -> None:
    decision = RestartTracker("always").on_exit(0, failed=True, requested=True)
    assert not decision.restart and not decision.failed


def test_flapping_is_detected_within_the_window_only() -> None:
    tracker = RestartTracker("always", flap_window=60, flap_limit=3)
    outcomes = [tracker.on_exit(t, failed=True, requested=False) for t in (0, 10, 20, 30)]
    assert [o.restart for o in outcomes] == [True, True, True, False]
    assert outcomes[-1].failed and "flapping: 4 restarts within 60 s" in outcomes[-1].reason
    spaced = RestartTracker("always", flap_window=60, flap_limit=3)
    assert all(spaced.on_exit(t, failed=True, requested=False).restart
               for t in (0, 100, 200, 300, 400))
