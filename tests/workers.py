"""Test services with known misbehaviour, imported by real workers in the integration tests."""

import logging
import os
import signal
import sys
import threading
import time

from tacore import BadRequest


class Echo:
    def handle(self, method, params):
        return params


class BlocksInStart:
    """start() never returns: the incident this project exists for."""

    def start(self, config):
        threading.Event().wait()  # BLOCKS-HERE

    def handle(self, method, params):
        return params


class CrashesInStart:
    def start(self, config):
        raise RuntimeError("cannot reach the database")

    def handle(self, method, params):
        return params


class CrashesLater:
    """Becomes READY, then dies after config["after"] seconds."""

    def start(self, config):
        threading.Timer(config.get("after", 0.3), os._exit, args=(17,)).start()

    def handle(self, method, params):
        return params


class IgnoresTerm:
    """Ignores SIGTERM and blocks in start(): only SIGKILL ends it."""

    def start(self, config):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)

    def handle(self, method, params):
        return params


class SlowStart:
    """Takes config["seconds"] to start."""

    def start(self, config):
        time.sleep(config.get("seconds", 0.5))

    def handle(self, method, params):
        return params


class Tool:
    """A service whose methods misbehave on demand: echo, pid, environ, sleep, raise, bad."""

    def handle(self, method, params):
        if method == "echo":
            return params
        if method == "pid":
            return os.getpid()
        if method == "environ":
            return os.environ.get(params)
        if method == "sleep":
            time.sleep(params)  # SLEEPS-HERE
            return params
        if method == "raise":
            raise ValueError(f"asked to fail: {params}")
        if method == "bad":
            raise BadRequest(f"params {params!r} are wrong")
        if method == "unserialisable":
            return object()
        raise BadRequest(f"unknown method {method!r}")


class FailsWhileFileExists:
    """start() raises while the file config["path"] exists."""

    def start(self, config):
        if os.path.exists(config["path"]):
            raise RuntimeError(f"{config['path']} exists")

    def handle(self, method, params):
        return params


class Hog:
    """grow(mb): keeps that many more megabytes alive."""

    def __init__(self):
        self.kept = []

    def handle(self, method, params):
        self.kept.append(bytearray(params * 2**20))
        return len(self.kept)


class SlowTool(Tool):
    """Tool, after a start() that takes config["seconds"]."""

    def start(self, config):
        time.sleep(config.get("seconds", 0.5))


class Chatty:
    """Prints, writes to stderr and logs through the stdlib, in start() and per request;
    "flood" prints params lines at once."""

    def start(self, config):
        print("starting up")
        logging.getLogger("chatty.lib").warning("a library warns")

    def handle(self, method, params):
        if method == "flood":
            for i in range(params):
                print(f"flood {i}")
            return params
        print(f"handling {method}")
        sys.stderr.write(f"stderr says {params}\n")
        logging.getLogger("chatty").error("logged %s", method)
        return params


class PrintsThenFails:
    """start() prints what it tries, then raises: the output shows in worker.exited."""

    def start(self, config):
        print("connecting to db.example:5432")
        raise RuntimeError("db unreachable")

    def handle(self, method, params):
        return params
