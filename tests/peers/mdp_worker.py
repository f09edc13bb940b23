"""A single-threaded Majordomo worker written from the specs (7/MDP 0.1, 18/MDP 0.2), as a
process of its own so that tests can SIGKILL it. No tacore code.

    python -m tests.peers.mdp_worker ENDPOINT SERVICE VERSION [INTERVAL]
    python -m tests.peers.mdp_worker          (as a tacore command worker: the settings come
                                               from TACORE_BACKEND, TACORE_SERVICE,
                                               TACORE_WORKER_IDENTITY, TACORE_HEARTBEAT_INTERVAL;
                                               PEER_MDP_VERSION picks 1 or 2; PEER_HANG_BEFORE_READY
                                               blocks for good before READY; PEER_FAULTHANDLER
                                               registers a stack dump on TACORE_STACK_FD)

It says READY, prints "ready" on stdout, then serves: a request whose first body frame is
"hang" blocks for good without reading its socket (as a worker busy in a long call does);
"sleep:SECONDS" keeps it busy that long without reading its socket (a long call in a
single-threaded worker), then it reads what the broker sent meanwhile (MDP: only HEARTBEAT or
DISCONNECT may come while it holds a request), replies "200" and the body, and prints
"busy SECONDS, heard N heartbeats"; "raw" is answered with one frame that is not a status code;
anything else is echoed after a "200" frame. It heartbeats every INTERVAL seconds while idle,
and exits on DISCONNECT.
"""

import os
import sys
import time

import zmq

# Worker commands by spec: 7/MDP and 18/MDP number them differently.
COMMANDS = {1: {"ready": b"\x01", "request": b"\x02", "reply": b"\x03", "heartbeat": b"\x04",
                "disconnect": b"\x05"},
            2: {"ready": b"\x01", "request": b"\x02", "final": b"\x04", "heartbeat": b"\x05",
                "disconnect": b"\x06"}}


def main(endpoint: str, service: str, version: int, interval: float,
         identity: bytes | None = None) -> None:
    header = [b"", b"MDPW01"] if version == 1 else [b"MDPW02"]
    codes = COMMANDS[version]
    reply = codes["reply" if version == 1 else "final"]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
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
                if body[:1] and body[0].startswith(b"sleep:"):
                    seconds = float(body[0][len(b"sleep:"):])
                    time.sleep(seconds)
                    heard = 0
                    while sock.poll(0):
                        command = sock.recv_multipart()[len(header):][:1]
                        if command == [codes["disconnect"]]:
                            print(f"busy {seconds:g}, told to disconnect", flush=True)
                            return
                        if command != [codes["heartbeat"]]:
                            print(f"busy {seconds:g}, unexpected {command!r}", flush=True)
                            return
                        heard += 1
                    sock.send_multipart([*header, reply, client, b"", b"200", *body])
                    print(f"busy {seconds:g}, heard {heard} heartbeats", flush=True)
                    beat = time.monotonic() + interval  # the reply was a heartbeat too
                    continue
                answer = [b"not-a-status"] if body[:1] == [b"raw"] else [b"200", *body]
                sock.send_multipart([*header, reply, client, b"", *answer])
        if time.monotonic() >= beat:
            sock.send_multipart([*header, codes["heartbeat"]])
            beat = time.monotonic() + interval


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4
             else 1.0)
    else:
        env = os.environ
        if env.get("PEER_FAULTHANDLER"):  # the one line the README documents
            import faulthandler
            import signal
            faulthandler.register(signal.SIGUSR1, file=int(env["TACORE_STACK_FD"]),
                                  all_threads=True)
        if env.get("PEER_HANG_BEFORE_READY"):
            print("connecting to a dependency that never answers", flush=True)
            while True:
                time.sleep(3600)
        main(env["TACORE_BACKEND"], env["TACORE_SERVICE"], int(env.get("PEER_MDP_VERSION", "1")),
             float(env["TACORE_HEARTBEAT_INTERVAL"]), env["TACORE_WORKER_IDENTITY"].encode())
