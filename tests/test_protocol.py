"""The Majordomo worker codec: valid frames decode, garbage raises ProtocolError."""

import pytest

from tacore.brokering import protocol as mdp

ID = b"worker-1"


@pytest.mark.parametrize("frames,command,service", [
    ([ID, b"", b"MDPW01", b"\x01", b"echo"], mdp.READY, b"echo"),
    ([ID, b"MDPW02", b"\x01", b"echo"], mdp.READY, b"echo"),
    ([ID, b"", b"MDPW01", b"\x04"], mdp.HEARTBEAT, b""),
    ([ID, b"MDPW02", b"\x05"], mdp.HEARTBEAT, b""),
    ([ID, b"", b"MDPW01", b"\x05"], mdp.DISCONNECT, b""),
    ([ID, b"MDPW02", b"\x06"], mdp.DISCONNECT, b""),
])
def test_valid_commands(frames, command, service):
    """READY, HEARTBEAT and DISCONNECT in both protocol versions."""
    msg = mdp.parse_worker(frames)
    assert (msg.identity, msg.command, msg.service) == (ID, command, service)
    assert msg.version == (1 if b"MDPW01" in frames else 2)


def test_replies_carry_client_and_body():
    """A 0.1 REPLY and a 0.2 PARTIAL/FINAL keep the client address and every body frame."""
    v1 = mdp.parse_worker([ID, b"", b"MDPW01", b"\x03", b"client", b"", b"200", b"{}"])
    assert (v1.command, v1.client, list(v1.body)) == (mdp.REPLY, b"client", [b"200", b"{}"])
    v2 = mdp.parse_worker([ID, b"MDPW02", b"\x03", b"c", b"", b"x"])
    assert v2.command == mdp.PARTIAL
    assert mdp.parse_worker([ID, b"MDPW02", b"\x04", b"c", b"", b"x"]).command == mdp.REPLY


@pytest.mark.parametrize("frames", [
    [ID],
    [ID, b""],
    [ID, b"", b"MDPC01", b"\x01", b"echo"],  # a client header on the worker socket
    [ID, b"MDPW01", b"\x01", b"echo"],  # 0.1 without its empty frame
    [ID, b"", b"MDPW02", b"\x01", b"echo"],  # 0.2 with 0.1's empty frame
    [ID, b"", b"MDPW01"],  # no command
    [ID, b"", b"MDPW01", b"\x09"],  # unknown command
    [ID, b"", b"MDPW01", b"\x01"],  # READY without service
    [ID, b"", b"MDPW01", b"\x01", b""],  # READY with empty service
    [ID, b"", b"MDPW01", b"\x01", b"a", b"b"],  # READY with two services
    [ID, b"", b"MDPW01", b"\x04", b"extra"],  # HEARTBEAT with arguments
    [ID, b"", b"MDPW01", b"\x03", b"client"],  # REPLY without envelope
    [ID, b"", b"MDPW01", b"\x03", b"client", b"x", b"body"],  # REPLY with a bad delimiter
])
def test_garbage_raises(frames):
    """Anything malformed is a ProtocolError, never another exception."""
    with pytest.raises(mdp.ProtocolError):
        mdp.parse_worker(frames)


def test_outgoing_commands_match_the_worker_version():
    """HEARTBEAT and DISCONNECT are framed in the worker's own version."""
    assert mdp.worker_command(ID, 1, mdp.HEARTBEAT) == [ID, b"", b"MDPW01", b"\x04"]
    assert mdp.worker_command(ID, 2, mdp.DISCONNECT) == [ID, b"MDPW02", b"\x06"]
