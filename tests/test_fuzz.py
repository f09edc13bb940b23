"""Random multipart garbage on the frontend and backend while a real client keeps calling."""

import os

import psutil
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mdp import call, v1_call

WORDS = [b"", b"MDPC01", b"MDPC02", b"MDPW01", b"MDPW02", b"\x00", b"\x01", b"\x02", b"\x03",
         b"\x04", b"\x05", b"\x06", b"mmi.service", b"mmi.x", b"fuzz", b'{"method": "echo"}']
frame = st.one_of(st.sampled_from(WORDS), st.binary(max_size=64))
message = st.lists(frame, min_size=1, max_size=8)
FUZZ = settings(max_examples=int(os.environ.get("TACORE_FUZZ_EXAMPLES", 300)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_garbage_never_hurts_a_good_client(start_daemon):
    """Each example sends garbage to both sockets, then a correct call must still succeed;
    afterwards no worker was restarted and the daemon's memory stayed bounded."""
    d = start_daemon({"tool": {"handler": "tests.workers:Tool", "workers": 2}})
    frontend, backend = (f"ipc://{d.runtime}/{name}.sock" for name in ("frontend", "backend"))
    rss_before = psutil.Process(d.proc.pid).memory_info().rss
    ctx = zmq.Context.instance()
    examples = []

    @FUZZ
    @given(front=message, back=message)
    def example(front, back):
        with ctx.socket(zmq.DEALER) as client_side, ctx.socket(zmq.DEALER) as worker_side:
            for sock, endpoint, frames in ((client_side, frontend, front),
                                           (worker_side, backend, back)):
                sock.setsockopt(zmq.LINGER, 100)
                sock.connect(endpoint)
                sock.send_multipart(frames)
        examples.append(1)
        marker = front[0].hex()
        assert call(frontend, "tool", "echo", marker, timeout=5) == ("200", marker)

    example()
    assert len(examples) >= FUZZ.max_examples
    assert d.proc.poll() is None
    assert all(w["restarts"] == 0 and w["state"] == "READY" for w in d.workers("tool"))
    rss = psutil.Process(d.proc.pid).memory_info().rss
    assert rss < rss_before + 20 * 2**20, (rss_before, rss)


def test_oversized_message_is_dropped_and_others_are_served(start_daemon):
    """A message over max_message_size disconnects its sender; other clients are unaffected."""
    d = start_daemon({"tool": {"handler": "tests.workers:Tool"}},
                     broker={"max_message_size": 4096})
    frontend = f"ipc://{d.runtime}/frontend.sock"
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.REQ) as big:
        big.setsockopt(zmq.LINGER, 0)
        big.connect(frontend)
        big.send_multipart([b"MDPC01", b"tool", b"x" * 10_000])
        assert not big.poll(500)  # dropped: no reply can be sent to a disconnected peer
    assert v1_call(frontend, b"tool", [b'{"method": "echo", "params": 1}'])[2:] == [b"200", b"1"]
