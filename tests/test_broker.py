"""Brokering against a real daemon: every request gets exactly one reply, whatever happens."""

import json
import os
import signal
import threading

import pytest

from tacore.client import CallError, CallTimeout, Client
from tests.helpers import wait_until
from tests.mdp import ExternalWorker, body, call, v1_call, v2_call

TOOL = {"tool": {"handler": "tests.workers:Tool", "workers": 2, "request_timeout": 2}}


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def test_v1_request_reply(start_daemon):
    """A 7/MDP REQ client gets [MDPC01][service]["200"][result]."""
    d = start_daemon(TOOL)
    reply = v1_call(frontend(d), b"tool", [body("echo", {"x": [1, 2]})])
    assert reply == [b"MDPC01", b"tool", b"200", b'{"x": [1, 2]}']


def test_v2_request_final(start_daemon):
    """An 18/MDP DEALER client gets one FINAL: [MDPC02][0x03][service]["200"][result]."""
    d = start_daemon(TOOL)
    replies = v2_call(frontend(d), b"tool", [body("echo", "hi")])
    assert replies == [[b"MDPC02", b"\x03", b"tool", b"200", b'"hi"']]


def test_status_codes_from_the_worker(start_daemon):
    """400 for bad bodies and BadRequest, 500 for a raising handler; the worker keeps serving."""
    d = start_daemon(TOOL)
    ep = frontend(d)
    assert call(ep, "tool", "bad", 1)[0] == "400"
    status, payload = call(ep, "tool", "raise", "boom")
    assert status == "500" and payload == {"error": "ValueError", "message": "asked to fail: boom"}
    assert call(ep, "tool", "unserialisable")[0] == "500"
    for frames, expected in (([b"not json"], "not JSON"), ([b"[1]"], "JSON object"),
                             ([b"\xff\xfe"], "not JSON"), ([b"{}", b"{}"], "one frame"),
                             ([], "one frame")):
        reply = v1_call(ep, b"tool", frames)
        assert reply[2] == b"400" and expected in json.loads(reply[3])["message"], reply
    assert call(ep, "tool", "echo", 7) == ("200", 7)
    failed = d.wait_event("request.failed")[0]
    assert "asked to fail" in failed["exception"]
    assert all(w["restarts"] == 0 for w in d.workers("tool"))


def test_unknown_service_is_404_at_once(start_daemon):
    """A service nobody configured or registered: 404 without waiting for a timeout."""
    d = start_daemon(TOOL)
    status, payload = call(frontend(d), "nope", "x", timeout=1)
    assert status == "404" and payload["error"] == "no_such_service"


def test_mmi_service(start_daemon):
    """8/MMI: "200" for a served service, "404" otherwise, "501" for other mmi.* names."""
    d = start_daemon(TOOL)
    ep = frontend(d)
    assert v1_call(ep, b"mmi.service", [b"tool"]) == [b"MDPC01", b"mmi.service", b"200"]
    assert v1_call(ep, b"mmi.service", [b"nope"]) == [b"MDPC01", b"mmi.service", b"404"]
    assert v1_call(ep, b"mmi.nope", [b"tool"]) == [b"MDPC01", b"mmi.nope", b"501"]
    assert v2_call(ep, b"mmi.service", [b"tool"]) == [[b"MDPC02", b"\x03", b"mmi.service", b"200"]]


def test_worker_killed_mid_request_is_502_at_once(start_daemon):
    """SIGKILL while a request runs: "502" right away, and the slot is refilled."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "request_timeout": 30}})
    pid = d.workers("tool")[0]["pid"]
    result = {}
    caller = threading.Thread(target=lambda: result.update(r=call(frontend(d), "tool", "sleep", 20)))
    caller.start()
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "the worker to be busy")
    os.kill(pid, signal.SIGKILL)
    caller.join(5)
    assert result["r"][0] == "502" and result["r"][1]["error"] == "worker_died"
    wait_until(lambda: (w := d.workers("tool")[0])["state"] == "READY" and w["pid"] != pid, 10,
               "a replacement")


def test_retry_on_failure_requeues_once(start_daemon):
    """With retry_on_failure, a request whose worker died is answered by another worker."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 2, "retry_on_failure": True}})
    ep, result = frontend(d), {}
    caller = threading.Thread(target=lambda: result.update(r=call(ep, "tool", "sleep", 0.5)))
    caller.start()
    wait_until(lambda: any(w["state"] == "BUSY" for w in d.workers("tool")), 5, "a busy worker")
    busy = next(w["pid"] for w in d.workers("tool") if w["state"] == "BUSY")
    os.kill(busy, signal.SIGKILL)
    caller.join(10)
    assert result["r"] == ("200", 0.5)


def test_request_timeout_is_504_with_the_stack(start_daemon):
    """A handler past request_timeout: "504", its stack logged, the worker replaced."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "request_timeout": 0.5}})
    pid = d.workers("tool")[0]["pid"]
    status, payload = call(frontend(d), "tool", "sleep", 60)
    assert status == "504" and payload["error"] == "timeout"
    event = d.wait_event("request.timeout")[0]
    assert event["pid"] == pid and "SLEEPS-HERE" in event["blocked_at"]
    assert event["request_age"] >= 0.5
    wait_until(lambda: (w := d.workers("tool")[0])["state"] == "READY" and w["pid"] != pid, 10,
               "a replacement")
    assert d.workers("tool")[0]["last_exit"]["reason"] == "request_timeout"
    assert call(frontend(d), "tool", "echo", 1) == ("200", 1)


def test_queue_full_and_queue_timeout_are_503(start_daemon):
    """One busy worker, queue_limit 1: the third request is refused at once, the second
    waits queue_timeout and is refused."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "request_timeout": 10,
                               "queue_limit": 1, "queue_timeout": 0.5, "prefetch": 1}})
    ep, results = frontend(d), {}
    first = threading.Thread(target=lambda: results.update(a=call(ep, "tool", "sleep", 2)))
    first.start()
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "a busy worker")
    second = threading.Thread(target=lambda: results.update(b=call(ep, "tool", "echo", 2)))
    second.start()
    wait_until(lambda: d.status()["services"]["tool"]["queue"] == 1, 5, "a queued request")
    status, payload = call(ep, "tool", "echo", 3)
    assert status == "503" and payload["error"] == "queue_full"
    second.join(5)
    assert results["b"][0] == "503" and results["b"][1]["error"] == "no_worker"
    first.join(5)
    assert results["a"] == ("200", 2)


def test_fatal_service_is_503_at_once(start_daemon):
    """A service whose every slot is FATAL answers "503" without queueing."""
    d = start_daemon({"stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 0.2,
                                "max_restarts": 0, "queue_timeout": 30}}, wait_ready=False)
    d.wait_event("worker.fatal")
    status, payload = call(frontend(d), "stuck", "x", timeout=2)
    assert status == "503" and payload["error"] == "service_fatal"


def test_shutdown_answers_waiting_and_new_requests_503(start_daemon):
    """SIGTERM: queued requests get "503", the running one finishes with "200"."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "stop_timeout": 5, "prefetch": 1}})
    ep, results = frontend(d), {}
    running = threading.Thread(target=lambda: results.update(a=call(ep, "tool", "sleep", 1)))
    running.start()
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "a busy worker")
    queued = threading.Thread(target=lambda: results.update(b=call(ep, "tool", "echo", 1)))
    queued.start()
    wait_until(lambda: d.status()["services"]["tool"]["queue"] == 1, 5, "a queued request")
    d.proc.send_signal(signal.SIGTERM)
    queued.join(5)
    running.join(5)
    assert results["b"][0] == "503" and results["b"][1]["error"] == "shutting_down"
    assert results["a"] == ("200", 1)
    assert d.proc.wait(10) == 0


@pytest.mark.parametrize("version", [1, 2])
def test_external_worker_serves_a_service(start_daemon, version):
    """An MDP worker tacore did not fork registers, serves, is shown as external."""
    d = start_daemon(TOOL)
    worker = ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"outside", version=version)
    worker.start()
    try:
        wait_until(lambda: "outside" in d.status()["services"], 5, "the external worker")
        (entry,) = d.status()["services"]["outside"]["workers"]
        assert entry["external"] is True and entry["pid"] is None
        assert v1_call(frontend(d), b"outside", [b"ping"]) == [b"MDPC01", b"outside", b"200", b"ping"]
        assert v1_call(frontend(d), b"mmi.service", [b"outside"])[2] == b"200"
    finally:
        worker.stop()
    wait_until(lambda: "outside" not in d.status()["services"], 5, "the worker to leave")
    # Its queue lingers for queue_timeout: a worker that comes back takes what waits.
    results, threads = _calls(frontend(d), ("waiting", "echo", 1), service="outside")
    again = ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"outside", version=version)
    again.start()
    try:
        for t in threads:
            t.join(10)
        assert results["waiting"][0] == "200"
    finally:
        again.stop()


def test_v2_partials_are_streamed(start_daemon):
    """An 18/MDP worker's PARTIALs reach an 18/MDP client before its FINAL; a 7/MDP client
    gets only the final reply."""
    d = start_daemon(TOOL)
    stream = ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"stream", version=2,
                            handler=lambda f: [[b"1"], [b"2"], [b"200", b"done"]])
    stream.start()
    try:
        wait_until(lambda: "stream" in d.status()["services"], 5, "the external worker")
        replies = v2_call(frontend(d), b"stream", [b"go"])
        assert [r[1] for r in replies] == [b"\x02", b"\x02", b"\x03"]
        assert [r[3:] for r in replies] == [[b"1"], [b"2"], [b"200", b"done"]]
        assert v1_call(frontend(d), b"stream", [b"go"]) == [b"MDPC01", b"stream", b"200", b"done"]
    finally:
        stream.stop()


def test_many_clients_no_reply_lost_or_duplicated(start_daemon):
    """32 threads x 50 calls: every request answered once, with its own payload."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 4}})
    client, answers, errors = Client(frontend(d)), [], []

    def run(n):
        for i in range(50):
            try:
                answers.append(client.call("tool", "echo", [n, i], timeout=10))
            except CallError as e:
                errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert not errors
    assert sorted(map(tuple, answers)) == [(n, i) for n in range(32) for i in range(50)]
    served = sum(w["requests"] for w in d.workers("tool"))
    assert served == 32 * 50


def test_client_library_errors_and_timeouts(start_daemon, workdir):
    """CallError carries the status; CallTimeout after every retry when nobody answers."""
    d = start_daemon(TOOL)
    with Client(frontend(d)) as client:
        assert client.call("tool", "echo", {"a": 1}) == {"a": 1}
        with pytest.raises(CallError) as info:
            client.call("tool", "bad", 1)
    assert info.value.status == "400" and "wrong" in info.value.message
    with pytest.raises(CallTimeout) as info:
        Client(f"ipc://{workdir}/nobody.sock", retries=2).call("tool", "echo", timeout=0.2)
    assert info.value.status is None and "3 attempt(s)" in info.value.message


def test_silent_external_worker_expires(start_daemon):
    """An external worker that stops heartbeating is dropped after interval x liveness."""
    d = start_daemon(TOOL, broker={"heartbeat_interval": 0.1, "heartbeat_liveness": 3})
    worker = ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"outside", interval=0.1)
    worker.start()
    try:
        wait_until(lambda: "outside" in d.status()["services"], 5, "the external worker")
        worker.mute.set()
        wait_until(lambda: "outside" not in d.status()["services"], 5, "the worker to expire")
        assert v1_call(frontend(d), b"mmi.service", [b"outside"])[2] == b"404"
    finally:
        worker.stop()


def test_reply_to_a_vanished_client_leaves_nothing_behind(start_daemon):
    """A client that gives up before its reply: the reply is dropped, the worker is free."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1}})
    import zmq
    with zmq.Context.instance().socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(frontend(d))
        sock.send_multipart([b"MDPC01", b"tool", body("sleep", 0.3)])
        wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "the worker to be busy")
    wait_until(lambda: d.workers("tool")[0]["state"] == "READY", 5, "the worker to be free")
    worker = d.workers("tool")[0]
    assert worker["requests"] == 1 and worker["request_age"] is None
    assert d.status()["services"]["tool"]["queue"] == 0
    assert call(frontend(d), "tool", "echo", 2) == ("200", 2)


def _calls(endpoint, *calls, service="tool"):
    """Start calls in threads, in order (each one sent after the previous is in the daemon)."""
    results, threads = {}, []
    for key, method, params in calls:
        t = threading.Thread(target=lambda k=key, m=method, p=params:
                             results.update({k: call(endpoint, service, m, p, timeout=20)}))
        t.start()
        threads.append(t)
    return results, threads


def test_prefetched_request_survives_its_workers_death(start_daemon):
    """Prefetch 2: the request waiting behind a running one never started, so when the worker
    dies it is served by the replacement; only the running one gets "502"."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "prefetch": 2,
                               "request_timeout": 30}})
    pid = d.workers("tool")[0]["pid"]
    results, threads = _calls(frontend(d), ("running", "sleep", 30))
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "busy")
    more, more_threads = _calls(frontend(d), ("waiting", "echo", "second"))
    wait_until(lambda: (s := d.status()["services"]["tool"])["requests"] == 2 and
               s["queue"] == 0, 5, "both in the worker")
    os.kill(pid, signal.SIGKILL)
    for t in threads + more_threads:
        t.join(15)
    assert results["running"][0] == "502"
    assert more["waiting"] == ("200", "second")


def test_prefetched_request_clock_starts_when_it_does(start_daemon):
    """request_timeout counts from the moment a request starts, not from when it was sent."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "prefetch": 2,
                               "request_timeout": 0.8}})
    results, threads = _calls(frontend(d), ("a", "sleep", 0.5))
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "busy")
    more, more_threads = _calls(frontend(d), ("b", "sleep", 0.5))
    for t in threads + more_threads:
        t.join(10)
    assert results["a"] == ("200", 0.5) and more["b"] == ("200", 0.5)  # b: 1 s after sending


def test_timeout_of_the_running_request_requeues_the_next(start_daemon):
    """The running request times out ("504"); the one behind it is served elsewhere."""
    d = start_daemon({"tool": {**TOOL["tool"], "workers": 1, "prefetch": 2,
                               "request_timeout": 0.5}})
    results, threads = _calls(frontend(d), ("stuck", "sleep", 60))
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "busy")
    more, more_threads = _calls(frontend(d), ("next", "echo", 1))
    for t in threads + more_threads:
        t.join(15)
    assert results["stuck"][0] == "504" and more["next"] == ("200", 1)
