"""Health decided from plain status data: health, systemd's STATUS line, service_fatal."""

from tacore import health
from tacore.supervision import states


def worker(state, slot=0, external=False, **more):
    return {"slot": slot, "state": state, "external": external, "last_exit": None,
            "fatal_reason": None, "next_retry_in": None, **more}


def service(*workers, min_ready=1, removing=False):
    return {"workers": list(workers), "min_ready": min_ready, "removing": removing}


def status(services, stopping=False, degraded=None):
    return {"daemon": {"stopping": stopping,
                       "persistence": {"enabled": True, "degraded": degraded}},
            "services": services}


def test_serving_names_ready_and_the_routers_busy():
    """READY is the one lifecycle state that serves; BUSY is how status shows a READY worker
    that holds a request (the router's to know), so it is not a lifecycle state."""
    assert set(health.SERVING) == {str(states.State.READY), "BUSY"}
    assert "BUSY" not in {str(s) for s in states.State}


def test_healthy_when_every_service_has_min_ready():
    """READY and BUSY both count; a service without forked workers is not judged."""
    result = health.assess_health(status({
        "echo": service(worker("READY"), worker("BUSY", 1), min_ready=2),
        "outside": service(worker("READY", None, external=True), min_ready=0),
        "none": service(min_ready=0)}))
    assert result == {"healthy": True, "problems": [], "warnings": []}


def test_a_fatal_slot_is_named_with_its_reason_and_retry():
    """The failing service gets one line: counts, then each slot that is not serving."""
    fatal = worker("FATAL", fatal_reason="6 start failures within 60s (6 start_timeout)",
                   next_retry_in=299.6)
    backoff = worker("BACKOFF", 1, last_exit={"reason": "crashed"})
    result = health.assess_health(status({"stuck": service(fatal, backoff)}))
    assert result["problems"] == [
        "stuck: 0/2 ready (min_ready 1); slot 0 FATAL: 6 start failures within 60s "
        "(6 start_timeout); retried by itself in 300s; slot 1 BACKOFF after crashed"]
    assert not result["healthy"]


def test_shutdown_removal_and_degraded_persistence():
    """A stopping daemon is unhealthy; a service being removed is not judged; a degraded
    store is a warning, not a problem."""
    result = health.assess_health(status({"old": service(worker("STOPPING"), removing=True)},
                                         stopping=True, degraded="disk I/O error"))
    assert result["problems"] == ["daemon: shutting down"]
    assert result["warnings"] == ["persistence degraded (disk I/O error): events are kept in "
                                  "memory only"]


def test_pool_summary_names_fatal_slots_and_settles():
    """systemd's STATUS line; start-up is over once each service is ready or has a FATAL slot."""
    text, settled = health.pool_summary({
        "tool": service(worker("READY")),
        "stuck": service(worker("FATAL", next_retry_in=300.0))})
    assert text == "tool 1/1, stuck 0/1 ready; FATAL: stuck/0 (retry in 300s)"
    assert settled
    assert health.pool_summary({"echo": service(worker("STARTING"))}) == ("echo 0/1 ready", False)


def test_service_fatal_only_when_every_slot_is():
    """One slot still trying, or no slots at all, is not fatal."""
    assert health.service_fatal(["FATAL", "FATAL"])
    assert not health.service_fatal(["FATAL", "BACKOFF"])
    assert not health.service_fatal([])
    assert health.service_fatal(state for state in ["FATAL"])
