"""A load of Majordomo clients for the several-hosts tests, run as its own process (inside a
network namespace: ``ip netns exec C python -m tests.netload ...``).

Each of ``--clients`` DEALER sockets sends one request at a time (7/MDP 0.1 client framing)
with a unique id as its body, and counts every reply per id, so a duplicate shows. It runs
until its stdin closes, then waits ``--grace`` seconds for what is still in flight, and prints
one JSON object: per request, when it was sent and answered (CLOCK_MONOTONIC, which the test
shares), its status, how many replies came and in how many attempts.

With ``--retry SECONDS``, a request without a reply that long is sent again on a new socket
(the client strategy 7/MDP recommends; the old socket and whatever it would still receive
are dropped), so a request that reached a broker after it stopped reading is answered by the
next one. Without it, such a request shows as never answered.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import zmq
import zmq.auth


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("service")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--secret-key", help="this client's NAME.key_secret (CURVE)")
    parser.add_argument("--server-key", help="the daemon's public NAME.key (CURVE)")
    parser.add_argument("--retry", type=float, default=0.0,
                        help="resend on a new socket after this many seconds (0: never)")
    args = parser.parse_args()
    ctx = zmq.Context()
    curve = {}
    if args.secret_key:
        public, secret = zmq.auth.load_certificate(args.secret_key)
        server, _ = zmq.auth.load_certificate(args.server_key)
        curve = {"curve_serverkey": server, "curve_publickey": public, "curve_secretkey": secret}
    records: dict[str, dict] = {}
    lock = threading.Lock()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(ctx, args, curve, n, records, lock, stop))
               for n in range(args.clients)]
    for t in threads:
        t.start()
    print("started", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps(list(records.values())), flush=True)


def connect(ctx, args, curve: dict) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in curve.items():
        setattr(sock, option, value)
    sock.connect(args.endpoint)
    return sock


def client(ctx, args, curve: dict, n: int, records: dict, lock, stop) -> None:
    sock = connect(ctx, args, curve)
    sequence, waiting = 0, None
    attempt_at = 0.0
    body = None
    grace_until = None
    while True:
        if stop.is_set() and grace_until is None:
            grace_until = time.monotonic() + args.grace
        if grace_until is not None and (waiting is None or time.monotonic() > grace_until):
            if time.monotonic() > grace_until:
                break
        if waiting is None and grace_until is None:
            sequence += 1
            waiting = f"{n}-{sequence}"
            body = json.dumps({"method": "echo", "params": waiting}).encode()
            with lock:
                records[waiting] = {"id": waiting, "sent": time.monotonic(), "answered": None,
                                    "status": None, "replies": 0, "attempts": 1}
            attempt_at = time.monotonic()
            sock.send_multipart([b"", b"MDPC01", args.service.encode(), body])
        elif waiting is not None and args.retry and time.monotonic() - attempt_at > args.retry:
            sock.close()
            sock = connect(ctx, args, curve)
            with lock:
                records[waiting]["attempts"] += 1
            attempt_at = time.monotonic()
            sock.send_multipart([b"", b"MDPC01", args.service.encode(), body])
        if not sock.poll(50):
            continue
        frames = sock.recv_multipart()
        now = time.monotonic()
        # [""]["MDPC01"][service][status][body]; the body of an echo names its request
        try:
            status, payload = frames[3].decode(), frames[4]
            answered = json.loads(payload) if status == "200" else waiting
        except (IndexError, ValueError):
            status, answered = "bad", waiting
        with lock:
            record = records.get(answered) if isinstance(answered, str) else None
            if record is None:
                continue
            record["replies"] += 1
            if record["answered"] is None:
                record["answered"], record["status"] = now, status
        if answered == waiting:
            waiting = None
    sock.close()


if __name__ == "__main__":
    main()
