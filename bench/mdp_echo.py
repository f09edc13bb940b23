"""An echo worker speaking plain 7/MDP, as a tacore command worker (``command = [...]``).

It does the same work per request as tacore's own echo worker (decode the JSON request, encode
the JSON reply) but with pyzmq's ordinary multipart calls and the Majordomo frames of the spec,
as a user's worker in any language would: ``bench/broker.py --setups ...,tacore-mdp`` measures
the broker's external-worker path with it.
"""

import json
import os

import zmq

HEADER, READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = (b"MDPW01", b"\x01", b"\x02", b"\x03",
                                                         b"\x04", b"\x05")


def main() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, os.environ["TACORE_WORKER_IDENTITY"].encode())
    sock.connect(os.environ["TACORE_BACKEND"])
    sock.send_multipart([b"", HEADER, READY, os.environ["TACORE_SERVICE"].encode()])
    interval = float(os.environ["TACORE_HEARTBEAT_INTERVAL"])
    while True:
        if not sock.poll(interval * 1000):
            sock.send_multipart([b"", HEADER, HEARTBEAT])
            continue
        frames = sock.recv_multipart()
        command = frames[2]
        if command == REQUEST:
            request = json.loads(frames[5])
            sock.send_multipart([b"", HEADER, REPLY, frames[3], b"", b"200",
                                 json.dumps(request.get("params")).encode()])
        elif command == DISCONNECT:
            return


if __name__ == "__main__":
    main()
