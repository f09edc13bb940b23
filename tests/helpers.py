"""Waiting for a condition with a deadline: the only way tests wait."""

import time


def wait_until(predicate, timeout: float, what: str = "the condition", interval: float = 0.01):
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds
    (``what`` may be a callable, asked then: a description of what was seen instead)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{what() if callable(what) else what}")
        time.sleep(interval)


class Load:
    """Clients calling a service continuously from threads; counts what was sent and answered.

    Every call is counted once as sent and once as answered (a result or a CallError with its
    status): a request without exactly one reply shows as sent != answered.
    """

    def __init__(self, endpoint: str, service: str, clients: int = 4, method: str = "echo",
                 params=None, timeout: float = 20.0):
        import threading

        from tacore.client import Client

        self.client = Client(endpoint)
        self.service, self.method, self.params, self.timeout = service, method, params, timeout
        self.sent = self.answered = 0
        self.statuses: dict = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        from tacore.client import CallError

        while not self.stopping.is_set():
            with self.lock:
                self.sent += 1
            try:
                self.client.call(self.service, self.method, self.params, timeout=self.timeout)
                status = "200"
            except CallError as e:
                status = e.status or "no reply"
            with self.lock:
                self.answered += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        self.client.close()
