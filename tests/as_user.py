"""Run tacorectl, tacored or the client library as another user, in this process:

    python -m tests.as_user UID GID[,GID...] tacorectl|tacored|client ARGS...

The interpreter and its standard library may live where that user cannot read (e.g. under
/root), so everything is imported first, as root; then the process takes GID as its primary
group, the other GIDs as its supplementary groups, and UID, and runs the program. ``client
ENDPOINT SERVICE METHOD PARAMS_JSON`` calls through ``tacore.client.Client`` and prints the
result, or the exception's class and message on stderr (exit 1).
"""

import importlib.metadata  # noqa: F401  (imported lazily by libraries on 3.13)
import json
import os
import sys
import time

import tacore.runtime.child  # noqa: F401  (the workers' code, which the spawner imports)
import tacore.services.echo  # noqa: F401  (a handler the daemon imports while validating)
from tacore.cli import tacorectl, tacored
from tacore.client import CallError, Client


def client(endpoint: str, service: str, method: str, params: str) -> None:
    started = time.monotonic()
    try:
        with Client(endpoint) as c:
            print(json.dumps(c.call(service, method, json.loads(params), timeout=5)))
    except CallError as e:
        print(f"{type(e).__name__} after {time.monotonic() - started:.2f}s: {e.message}",
              file=sys.stderr)
        sys.exit(1)


def main() -> None:
    uid, gids = int(sys.argv[1]), [int(g) for g in sys.argv[2].split(",")]
    program, args = sys.argv[3], sys.argv[4:]
    os.setgroups(gids[1:])
    os.setgid(gids[0])
    os.setuid(uid)
    if program == "client":
        client(*args)
        return
    {"tacorectl": tacorectl.main, "tacored": tacored.main}[program](args, prog_name=program)


if __name__ == "__main__":
    main()
