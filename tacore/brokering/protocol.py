"""Majordomo wire format (rfc.zeromq.org 7/MDP 0.1 and 18/MDP 0.2), as seen by a ROUTER.

Worker → broker, after the ROUTER's identity frame:

    0.1  [""]["MDPW01"][0x01][service]                  READY
         [""]["MDPW01"][0x03][client][""][body...]      REPLY
         [""]["MDPW01"][0x04]                           HEARTBEAT
         [""]["MDPW01"][0x05]                           DISCONNECT
    0.2  ["MDPW02"][0x01][service]                      READY
         ["MDPW02"][0x03|0x04][client][""][body...]     PARTIAL | FINAL
         ["MDPW02"][0x05]                               HEARTBEAT
         ["MDPW02"][0x06]                               DISCONNECT

Broker → worker: 0.1 REQUEST [""]["MDPW01"][0x02][client][""][body...], HEARTBEAT, DISCONNECT;
0.2 the same without the leading empty frame and with 0.2's command numbers.

Client → broker (after the identity frame), and the replies:

    0.1  [""]["MDPC01"][service][body...]              REQUEST  (REQ socket, or DEALER + "")
         [""]["MDPC01"][service][body...]              REPLY
    0.2  ["MDPC02"][0x01][service][body...]            REQUEST  (DEALER)
         ["MDPC02"][0x02|0x03][service][body...]       PARTIAL | FINAL

Anything else is garbage: ``parse_worker``/``parse_client`` raise ProtocolError, and the broker
answers it where the sender can take an answer, and logs and drops it otherwise.

tacore's own workers may speak a compact framing for requests and replies (docs/framing.md),
offered by one more frame at the end of their 7/MDP READY and taken up by the broker only for
workers it forked; everything else they send (HEARTBEAT, DISCONNECT) stays 7/MDP:

    READY    [""]["MDPW01"][0x01][service]["tacore/1"]   the offer
    REQUEST  [0xA1 token(8)][body...]                     broker → worker
    REPLY    [0xA2 token(8) status][body...]              worker → broker
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message that is not valid Majordomo; dropped (and logged) by the broker."""


C_V1 = b"MDPC01"
C_V2 = b"MDPC02"
C2_REQUEST = b"\x01"
C2_PARTIAL = b"\x02"
C2_FINAL = b"\x03"

W_V1 = b"MDPW01"
W_V2 = b"MDPW02"

# 7/MDP 0.1 worker commands (also used by the worker runtime).
W_READY = b"\x01"
W_REQUEST = b"\x02"
W_REPLY = b"\x03"
W_HEARTBEAT = b"\x04"
W_DISCONNECT = b"\x05"

# 18/MDP 0.2 worker commands.
W2_READY = b"\x01"
W2_REQUEST = b"\x02"
W2_PARTIAL = b"\x03"
W2_FINAL = b"\x04"
W2_HEARTBEAT = b"\x05"
W2_DISCONNECT = b"\x06"

# The compact framing between the daemon and its own workers (docs/framing.md).
COMPACT_OFFER = b"tacore/1"
T_REQUEST = b"\xa1"
T_REPLY = b"\xa2"
TOKEN_END = 9  # a compact header: the kind byte, the 8-byte token, then (replies) the status
COMPACT = 0  # the framing of a link that speaks it (beside 1 and 2, the MDP versions)

# Version-independent command names used inside the broker.
READY, REPLY, PARTIAL, HEARTBEAT, DISCONNECT = "ready", "reply", "partial", "heartbeat", "disconnect"

_V1_COMMANDS = {W_READY: READY, W_REPLY: REPLY, W_HEARTBEAT: HEARTBEAT, W_DISCONNECT: DISCONNECT}
_V2_COMMANDS = {W2_READY: READY, W2_PARTIAL: PARTIAL, W2_FINAL: REPLY, W2_HEARTBEAT: HEARTBEAT,
                W2_DISCONNECT: DISCONNECT}
_OUT = {1: {HEARTBEAT: W_HEARTBEAT, DISCONNECT: W_DISCONNECT},
        2: {HEARTBEAT: W2_HEARTBEAT, DISCONNECT: W2_DISCONNECT}}


class WorkerMessage:
    """One decoded worker command (a plain class: it is made for every reply, so no frozen
    dataclass, whose __init__ costs several times more)."""

    __slots__ = ("identity", "version", "command", "service", "client", "body", "compact")

    def __init__(self, identity: bytes, version: int, command: str, service: bytes = b"",
                 client: bytes = b"", body=(), compact: bool = False):
        self.identity, self.version, self.command = identity, version, command
        self.service, self.client, self.body = service, client, body  # READY / replies
        self.compact = compact  # a READY that offers the compact framing


def parse_worker(frames: list[bytes]) -> WorkerMessage:
    """Decode one message received on the backend ROUTER (identity frame first)."""
    if len(frames) < 3:
        raise ProtocolError(f"{len(frames)} frames is too short for a worker command")
    identity = frames[0]
    if frames[1] == b"" and frames[2] == W_V1:
        version, rest, table = 1, frames[3:], _V1_COMMANDS
    elif frames[1] == W_V2:
        version, rest, table = 2, frames[2:], _V2_COMMANDS
    else:
        raise ProtocolError("not a Majordomo worker header (expected MDPW01 or MDPW02)")
    if not rest or rest[0] not in table:
        raise ProtocolError(f"unknown worker command {rest[0].hex() if rest else '(none)'}")
    command, args = table[rest[0]], rest[1:]
    if command == READY:
        offer = version == 1 and len(args) == 2 and args[1] == COMPACT_OFFER
        if not (len(args) == 1 or offer) or not args[0]:
            raise ProtocolError("READY must carry exactly one non-empty service name")
        return WorkerMessage(identity, version, READY, service=args[0], compact=offer)
    if command in (REPLY, PARTIAL):
        if len(args) < 3 or args[1] != b"":
            raise ProtocolError("a reply needs [client][\"\"][body...]")
        return WorkerMessage(identity, version, command, b"", args[0], args[2:])
    if args:
        raise ProtocolError(f"{command} takes no arguments, got {len(args)} frames")
    return WorkerMessage(identity, version, command)


def worker_command(identity: bytes, version: int, command: str) -> list[bytes]:
    """HEARTBEAT or DISCONNECT for a worker, in the worker's own protocol version."""
    header = [b"", W_V1] if version == 1 else [W_V2]
    return [identity, *header, _OUT[version][command]]


class ClientRequest:
    """A client's request as the broker keeps it until exactly one reply has gone back."""

    __slots__ = ("client", "version", "service", "body", "token", "arrived", "deadline",
                 "retried", "worker")

    def __init__(self, client: bytes, version: int, service: bytes, body: list, arrived: float):
        self.client, self.version, self.service, self.body = client, version, service, body
        self.arrived, self.deadline, self.token = arrived, 0.0, b""
        self.retried, self.worker = False, None


def parse_client(frames: list[bytes], now: float) -> ClientRequest:
    """Decode one message received on the frontend ROUTER (identity frame first)."""
    if len(frames) >= 4 and frames[1] == b"" and frames[2] == C_V1:
        return ClientRequest(frames[0], 1, frames[3], frames[4:], now)
    if len(frames) >= 4 and frames[1] == C_V2 and frames[2] == C2_REQUEST:
        return ClientRequest(frames[0], 2, frames[3], frames[4:], now)
    raise ProtocolError("not a Majordomo client request (expected [\"\"][MDPC01][service]"
                        "[body] or [MDPC02][0x01][service][body])")


def replyable_version(frames: list[bytes]) -> int | None:
    """For garbage from a client: the protocol version an error reply can use, if any."""
    if len(frames) >= 2 and frames[1] == b"":
        return 1  # a REQ envelope: any single reply unblocks the client
    if len(frames) >= 2 and frames[1] == C_V2:
        return 2
    return None


def client_reply(client: bytes, version: int, service: bytes, body, final: bool = True) -> list:
    if version == 1:
        return [client, b"", C_V1, service, *body]
    return [client, C_V2, C2_FINAL if final else C2_PARTIAL, service, *body]


def worker_request(identity: bytes, version: int, token: bytes, body) -> list:
    """A REQUEST in the worker's framing: 7/MDP (1), 18/MDP (2) or COMPACT."""
    if version == COMPACT:
        return [identity, T_REQUEST + token, *body]
    if version == 1:
        return [identity, b"", W_V1, W_REQUEST, token, b"", *body]
    return [identity, W_V2, W2_REQUEST, token, b"", *body]
