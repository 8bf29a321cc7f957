"""training.stop: the step the processes of a pod agree to stop at after a signal.

The coordination service is replaced by an in-memory key-value store with the same
calls (``key_value_set``, ``key_value_dir_get``, ``blocking_key_value_get``,
``wait_at_barrier``); "processes" are StopAgreement objects (threads where one has
to wait for another). The real 2-process run is in test_multihost.py.
"""
import signal
import threading

import pytest

from sslsteal_jax.training import stop as stop_lib
from sslsteal_jax.training.stop import AgreedStop, ForcedStop, StopAgreement

LEAD = 4


class FakeCoordination:
    """The coordination service's key-value store and barriers, in memory."""

    def __init__(self, processes):
        self.kv, self.cond = {}, threading.Condition()
        self.processes, self.arrived = processes, {}

    def key_value_set(self, key, value, allow_overwrite=False):
        with self.cond:
            if key in self.kv and not allow_overwrite:
                raise RuntimeError(f"ALREADY_EXISTS: {key}")
            self.kv[key] = value
            self.cond.notify_all()

    def key_value_dir_get(self, prefix):
        with self.cond:
            return [(k, v) for k, v in sorted(self.kv.items()) if k.startswith(prefix)]

    def blocking_key_value_get(self, key, timeout_ms):
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.kv, timeout_ms / 1000):
                raise RuntimeError(f"DEADLINE_EXCEEDED: {key}")
            return self.kv[key]

    def wait_at_barrier(self, name, timeout_ms):
        with self.cond:
            self.arrived[name] = self.arrived.get(name, 0) + 1
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.arrived[name] >= self.processes,
                                      timeout_ms / 1000):
                raise RuntimeError(f"DEADLINE_EXCEEDED: barrier {name}")


def _pod(n=2):
    """n agreements of one loop (the same prefix), one per process, sharing a store."""
    client = FakeCoordination(n)
    out = [StopAgreement(LEAD, processes=n, client=client, process_id=p) for p in range(n)]
    prefix = out[0].prefix
    for a in out:
        a.prefix = prefix
    return out


def test_no_signal_no_stop_and_no_entries():
    a, b = _pod()
    assert not any(x.check(c) for c in range(1, 20) for x in (a, b))
    assert a.client.kv == {}


def test_both_stop_at_the_largest_reported_step_plus_lead():
    a, b = _pod()
    a.requested = True               # process 0 got the Ctrl-C; it is at step 5
    assert a.check(5) is False       # publishes 5, waits for nothing yet
    assert a.client.kv == {a.prefix + "0": "5"}
    assert b.check(6) is False       # process 1 sees the entry, publishes 6: all reported
    assert b.stop_step == 6 + LEAD
    assert a.check(6) is False and a.stop_step == 6 + LEAD
    a_stops = [c for c in range(7, 11) if a.check(c)]
    b_stops = [c for c in range(7, 11) if b.check(c)]
    assert a_stops == b_stops == [10]


def test_a_process_lead_steps_ahead_waits_for_the_others():
    a, b = _pod()
    a.requested = True
    for c in range(3, 3 + LEAD):
        assert a.check(c) is False and a.stop_step is None
    result = {}
    t = threading.Thread(target=lambda: result.update(stop=a.check(3 + LEAD)))
    t.start()                        # at 3 + LEAD process 0 may run no further
    t.join(0.3)
    assert t.is_alive()              # it waits for process 1's report
    assert b.check(5) is False       # process 1 reports 5 (it was behind)
    t.join(5)
    assert not t.is_alive() and result == {"stop": False}
    assert a.stop_step == b.stop_step == 5 + LEAD


def test_waiting_for_a_dead_process_ends_with_an_error(monkeypatch):
    monkeypatch.setattr(stop_lib, "WAIT_MS", 50)
    a, _ = _pod()
    a.requested = True
    a.check(1)
    with pytest.raises(RuntimeError, match="process 1 did not report its step within 0.05 s"):
        a.check(1 + LEAD)


def test_past_the_agreed_step_is_a_bug():
    a, b = _pod()
    a.requested = True
    a.check(2), b.check(2), a.check(3)
    with pytest.raises(RuntimeError, match="past the agreed stop step 6"):
        a.check(7)


def _both_at_the_end(a, b, count):
    """``check_end(count)`` of both processes (it is a barrier: one runs in a thread)."""
    out = {}
    t = threading.Thread(target=lambda: out.update(a=a.check_end(count)))
    t.start()
    out["b"] = b.check_end(count)
    t.join(5)
    return out


def test_loop_end_after_an_interrupt_stops_every_process():
    """Process 1's signal comes after its last check: it reports at the barrier of the
    loop's end and every process stops there (after the final save)."""
    a, b = _pod()
    b.requested = True
    assert _both_at_the_end(a, b, 8) == {"a": True, "b": True}
    assert a.stop_step == b.stop_step == 8


def test_loop_end_without_an_interrupt_goes_on():
    a, b = _pod()
    assert _both_at_the_end(a, b, 8) == {"a": False, "b": False}


def test_first_signal_requests_second_forces(capsys):
    a, _ = _pod()
    a._on_signal(signal.SIGINT, None)
    assert a.requested
    assert "SIGINT: stopping at a step all 2 processes agree on" in capsys.readouterr().err
    with pytest.raises(ForcedStop):
        a._on_signal(signal.SIGTERM, None)


def test_one_process_stops_at_once_and_never_calls_the_service():
    a = StopAgreement(LEAD, processes=1, client=object())
    assert a.check(3) is False and a.check_end(3) is False
    with pytest.raises(AgreedStop):
        a._on_signal(signal.SIGTERM, None)


def test_handlers_installed_and_restored_in_the_main_thread():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    a, _ = _pod()
    with a:
        assert signal.getsignal(signal.SIGINT) == a._on_signal
        assert signal.getsignal(signal.SIGTERM) == a._on_signal
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    one = StopAgreement(LEAD, processes=1, client=object())
    with one:  # one process: Ctrl-C keeps Python's KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) == before[0]
        assert signal.getsignal(signal.SIGTERM) == one._on_signal


def test_a_signal_after_the_last_agreement_point_still_stops_this_process():
    a, _ = _pod()
    with pytest.raises(KeyboardInterrupt):
        with a:
            a.requested = True  # came after check_end decided to go on
