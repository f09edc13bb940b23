"""A single-threaded Majordomo worker written from the specs (7/MDP 0.1, 18/MDP 0.2), as a
process of its own so that tests can SIGKILL it. No tacore code.

    python -m tests.peers.mdp_worker ENDPOINT SERVICE VERSION [INTERVAL]

It says READY, prints "ready" on stdout, then serves: a request whose first body frame is
"hang" blocks for good without reading its socket (as a worker busy in a long call does);
"raw" is answered with one frame that is not a status code; anything else is echoed after a
"200" frame. It heartbeats every INTERVAL seconds while idle, and exits on DISCONNECT.
"""

import sys
import time

import zmq

# Worker commands by spec: 7/MDP and 18/MDP number them differently.
COMMANDS = {1: {"ready": b"\x01", "request": b"\x02", "reply": b"\x03", "heartbeat": b"\x04",
                "disconnect": b"\x05"},
            2: {"ready": b"\x01", "request": b"\x02", "final": b"\x04", "heartbeat": b"\x05",
                "disconnect": b"\x06"}}


def main(endpoint: str, service: str, version: int, interval: float) -> None:
    header = [b"", b"MDPW01"] if version == 1 else [b"MDPW02"]
    codes = COMMANDS[version]
    reply = codes["reply" if version == 1 else "final"]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([*header, codes["ready"], service.encode()])
    print("ready", flush=True)
    beat = time.monotonic() + interval
    while True:
        if sock.poll(max(0, beat - time.monotonic()) * 1000):
            frames = sock.recv_multipart()[len(header):]
            if frames[0] == codes["disconnect"]:
                return
            if frames[0] == codes["request"]:
                client, body = frames[1], frames[3:]  # [client][""][body...]
                if body[:1] == [b"hang"]:
                    while True:
                        time.sleep(3600)
                answer = [b"not-a-status"] if body[:1] == [b"raw"] else [b"200", *body]
                sock.send_multipart([*header, reply, client, b"", *answer])
        if time.monotonic() >= beat:
            sock.send_multipart([*header, codes["heartbeat"]])
            beat = time.monotonic() + interval


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4
         else 1.0)
