"""A service whose start() blocks forever, to watch tacore catch it (see README)."""

import socket


class Stuck:
    def start(self, config):
        # Waits for a connection that never comes: the kind of line the stack dump points at.
        server = socket.create_server(("127.0.0.1", 0))
        server.accept()

    def handle(self, method, params):
        return params
