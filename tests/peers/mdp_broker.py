"""A minimal Majordomo broker written from the 7/MDP 0.1 spec text, not from tacore's code:
the upstream a tacore node must also work with.

    python -m tests.peers.mdp_broker ENDPOINT [--interval SECONDS]

One ROUTER for clients and workers (the spec allows it: the header frame tells them apart).
Workers: READY registers one for its service; waiting workers get a HEARTBEAT every interval
and are dropped after 3 silent intervals; a request goes to the least recently used waiting
worker of its service or waits in the service's queue; a REPLY goes to the client named in it.
As the spec says nothing of acknowledging READY, this broker does not: a worker learns it is
registered from the first heartbeat. Busy workers are not heartbeated.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import zmq

C_CLIENT, W_WORKER = b"MDPC01", b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
LIVENESS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--interval", type=float, default=2.5)
    args = parser.parse_args()
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(args.endpoint)
    print("listening", flush=True)
    workers: dict[bytes, dict] = {}  # address -> {"service", "expiry"}
    waiting: dict[bytes, deque] = {}  # service -> addresses of idle workers, LRU first
    queues: dict[bytes, deque] = {}  # service -> [client address, body frames]
    next_beat = time.monotonic() + args.interval

    def drop(address: bytes) -> None:
        worker = workers.pop(address, None)
        if worker is not None and address in waiting.get(worker["service"], ()):
            waiting[worker["service"]].remove(address)

    def dispatch(service: bytes) -> None:
        while waiting.get(service) and queues.get(service):
            address = waiting[service].popleft()
            client, body = queues[service].popleft()
            sock.send_multipart([address, b"", W_WORKER, REQUEST, client, b"", *body])

    while True:
        if sock.poll(max(0.0, next_beat - time.monotonic()) * 1000):
            frames = sock.recv_multipart()
            address, empty, header = frames[0], frames[1], frames[2]
            now = time.monotonic()
            if empty != b"" or header not in (C_CLIENT, W_WORKER):
                continue  # invalid: dropped
            if header == C_CLIENT and len(frames) >= 4:
                queues.setdefault(frames[3], deque()).append((address, frames[4:]))
                dispatch(frames[3])
                continue
            command = frames[3] if len(frames) > 3 else b""
            worker = workers.get(address)
            if worker is not None:
                worker["expiry"] = now + LIVENESS * args.interval
            if command == READY and worker is None and len(frames) == 5:
                workers[address] = {"service": frames[4],
                                    "expiry": now + LIVENESS * args.interval}
                waiting.setdefault(frames[4], deque()).append(address)
                dispatch(frames[4])
            elif command == REPLY and worker is not None and len(frames) >= 7:
                client, service = frames[4], worker["service"]
                sock.send_multipart([client, b"", C_CLIENT, service, *frames[6:]])
                waiting.setdefault(service, deque()).append(address)
                dispatch(service)
            elif command == DISCONNECT:
                drop(address)
            elif command != HEARTBEAT or worker is None:  # valid but unexpected
                drop(address)
                sock.send_multipart([address, b"", W_WORKER, DISCONNECT])
        if time.monotonic() >= next_beat:
            now = time.monotonic()
            for address in [a for a, w in workers.items() if w["expiry"] < now]:
                drop(address)
            for idle in waiting.values():
                for address in idle:
                    sock.send_multipart([address, b"", W_WORKER, HEARTBEAT])
            next_beat = now + args.interval


if __name__ == "__main__":
    main()
