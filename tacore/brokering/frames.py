"""Multipart send and receive for the hot path, without pyzmq's convenience layer.

``Socket.send_multipart``/``recv_multipart`` do enum arithmetic on the flags and a
``getsockopt(RCVMORE)`` per frame; for Majordomo's 4-7 frame messages that is most of the
per-message cost (measured: 11 µs against 4 µs for a send and receive of 4 frames). These
call the Cython socket methods directly with integer flags and read ``Frame.more``.
"""

from __future__ import annotations

import zmq
import zmq.backend

from tacore.brokering.routes import FULL, GONE

_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
MORE = int(zmq.SNDMORE)
LARGE = 16 * 1024  # see recv_passing; below it a copy costs less than keeping a Frame
NOBLOCK = int(zmq.NOBLOCK)


def recv_frames(sock: zmq.Socket, flags: int = NOBLOCK) -> list[bytes]:
    """One whole message; raises zmq.Again (with NOBLOCK) when none is waiting."""
    frame = _recv(sock, flags, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, 0, False)
        parts.append(frame.bytes)
    return parts


def recv_passing(sock: zmq.Socket, flags: int = NOBLOCK) -> list:
    """One whole message for the broker, which passes bodies on without reading them: a last
    frame of LARGE bytes or more stays the zmq.Frame it came in, so sending it on shares
    libzmq's buffer instead of copying it twice (out of the message here, into a new one
    there). Every other frame is bytes."""
    return _passing(sock, _recv(sock, flags, False))


def recv_keyed(sock: zmq.Socket, flags: int = NOBLOCK) -> tuple[list, str | None]:
    """As recv_passing, and the ZAP user id of its sender (under CURVE, its z85 key)."""
    first = _recv(sock, flags, False)
    key = first.get("User-Id")
    return _passing(sock, first), key


def _passing(sock: zmq.Socket, frame) -> list:
    """The message that starts with ``frame``, as recv_passing returns it."""
    parts = []
    while frame.more:
        parts.append(frame.bytes)
        frame = _recv(sock, 0, False)
    parts.append(frame if len(frame) >= LARGE else frame.bytes)
    return parts


def send_frames(sock: zmq.Socket, frames, flags: int = NOBLOCK) -> None:
    """One whole message; with NOBLOCK, a peer that cannot take it raises at the first frame."""
    more = flags | MORE
    for frame in frames[:-1]:
        _send(sock, frame, more)
    _send(sock, frames[-1], flags)



def drain(sock: zmq.Socket, handle, now: float, keyed: bool = False) -> None:
    """Hand every message waiting on ``sock`` to ``handle(frames, now[, key])``."""
    while True:
        try:
            if keyed:
                frames, key = recv_keyed(sock)
                handle(frames, now, key)
            else:
                handle(recv_passing(sock), now)
        except zmq.Again:
            return


def send_or_drop(sock: zmq.Socket, frames) -> None:
    """To a client: one that went away or stopped reading loses its reply, nothing is kept."""
    try:
        send_frames(sock, frames)
    except zmq.ZMQError:
        pass


def send_or_say(sock: zmq.Socket, frames) -> str | None:
    """To a worker: None if sent, FULL if its queue is full, GONE if (ROUTER_MANDATORY) no
    connection has that identity any more."""
    try:
        send_frames(sock, frames)
    except zmq.Again:
        return FULL
    except zmq.ZMQError:
        return GONE
    return None
