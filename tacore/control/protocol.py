"""The control envelope.

Request (a REQ socket's frames, as the daemon's ROUTER sees them: [identity][""][json]):
    {"command": "status", "args": {...}}
Reply:
    {"ok": true, "result": ...}  or  {"ok": false, "error": "what went wrong"}
"""

from __future__ import annotations

import json

MAX_REQUEST = 64 * 1024


class BadEnvelope(Exception):
    pass


def decode_request(payload: bytes) -> tuple[str, dict]:
    if len(payload) > MAX_REQUEST:
        raise BadEnvelope(f"request is {len(payload)} bytes, the limit is {MAX_REQUEST}")
    try:
        request = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadEnvelope(f"request is not JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise BadEnvelope('request must be {"command": str, "args": {...}}')
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise BadEnvelope("args must be an object")
    return request["command"], args


def encode_request(command: str, args: dict) -> bytes:
    return json.dumps({"command": command, "args": args}).encode()


def ok(result) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode()


def error(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode()
