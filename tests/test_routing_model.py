"""The routing core against a model: random sequences of requests, READY, replies, deaths,
expiries, timeouts, reconfiguration and shutdown, with a fake clock and a fake network.

Workers speak 7/MDP, 18/MDP or (the daemon's own, when they offer it) the compact framing.
After every step: each request the broker accepted is in exactly one place (one queue of a
route the broker holds, or one registered worker's in-flight list) or has been answered, and
none was answered twice. At the end, with the clock run far ahead, every request has had
exactly one final reply.
"""

import os
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tacore import facts as f
from tacore.brokering.broker import Broker
from tacore.brokering.routes import GONE
from tacore.config import BrokerConfig, ServiceConfig

EXAMPLES = int(os.environ.get("TACORE_MODEL_EXAMPLES", 150))
OWN = {b"w0": b"a", b"w1": b"a"}  # the daemon's own workers, of service "a"
EXTERNAL = [b"x0", b"x1"]
IDENTITIES = [*OWN, *EXTERNAL]
SERVICES = [b"a", b"b", b"c", b"nope"]  # a: ours; b: workers = 0; c: not configured
BROKER = BrokerConfig(frontend=("ipc:///f",), backend="ipc:///b", heartbeat_interval=1.0,
                      heartbeat_liveness=3, max_external_services=2)


def configured(queue_limit: int = 3, with_a: bool = True) -> dict:
    services = {"b": ServiceConfig(name="b", workers=0, queue_limit=queue_limit,
                                   queue_timeout=2.0, request_timeout=5.0)}
    if with_a:
        services["a"] = ServiceConfig(name="a", handler="m:C", workers=3, prefetch=2,
                                      queue_limit=queue_limit, queue_timeout=3.0,
                                      request_timeout=4.0, retry_on_failure=True)
    return services


class RoutingModel(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.now = 0.0
        self.events = []
        self.finals = Counter()  # client -> final replies received
        self.partials_after_final = 0
        self.sent = []  # every client identity that sent a request
        self.alive: dict[bytes, int] = {}  # identity -> protocol version of its connection
        self.inbox: dict[bytes, list[bytes]] = {}  # identity -> request tokens, in order
        self.compact: set[bytes] = set()  # connections the broker sends compact requests
        self.broker = Broker(self.to_client, self.to_worker, self.events.append, BROKER,
                             configured())
        self.broker.start(self.now)
        for identity, service in OWN.items():  # forked by the supervisor
            self.broker.apply(f.Expect(identity, service, None), self.now)

    # --- the fake network ---------------------------------------------------------------

    def to_client(self, frames):
        client = frames[0]
        if client == b"g":
            return  # the "400" for garbage: no request was accepted
        final = frames[1] == b"" or frames[2] == b"\x03"
        if self.finals[client]:
            self.partials_after_final += 1
        if final:
            self.finals[client] += 1

    def to_worker(self, frames):
        identity = frames[0]
        if identity not in self.alive:
            return GONE
        if frames[1][:1] == b"\xa1":  # a compact REQUEST: [0xA1 token][body]
            self.inbox[identity].append(frames[1][1:])
            self.compact.add(identity)
            return None
        rest = frames[2:] if frames[1] == b"" else frames[1:]
        if rest[1] == b"\x02":  # REQUEST: [header][0x02][token][""][body]
            self.inbox[identity].append(rest[2])
        elif rest[1] == (b"\x05" if rest[0] == b"MDPW01" else b"\x06"):  # DISCONNECT
            del self.alive[identity]  # the peer closes this connection
        return None

    def send_worker(self, identity, command: str, *args):
        version = self.alive.get(identity, 1)
        codes = {1: {"ready": 1, "reply": 3, "heartbeat": 4, "disconnect": 5},
                 2: {"ready": 1, "partial": 3, "reply": 4, "heartbeat": 5, "disconnect": 6}}
        header = [b"", b"MDPW01"] if version == 1 else [b"MDPW02"]
        self.broker.from_worker([identity, *header, bytes([codes[version][command]]), *args],
                                self.now)

    # --- rules --------------------------------------------------------------------------

    @rule(service=st.sampled_from(SERVICES), version=st.sampled_from([1, 2]))
    def request(self, service, version):
        client = b"c%d" % len(self.sent)
        self.sent.append(client)
        header = [b"", b"MDPC01"] if version == 1 else [b"MDPC02", b"\x01"]
        self.broker.from_client([client, *header, service, client], self.now)

    @rule(identity=st.sampled_from(IDENTITIES), service=st.sampled_from(SERVICES[:3]),
          version=st.sampled_from([0, 1, 2]), own_service=st.integers(0, 3))
    def ready(self, identity, service, version, own_service):
        """version 0: a 7/MDP READY that offers the compact framing."""
        if identity in OWN and own_service:
            service = OWN[identity]  # mostly the right one
        if identity not in self.alive:  # a new connection
            self.alive[identity], self.inbox[identity] = version or 1, []
            self.compact.discard(identity)
        self.send_worker(identity, "ready", service, *([b"tacore/1"] if version == 0 else []))

    def pick(self, data, among) -> bytes:
        return data.draw(st.sampled_from(sorted(among)))

    @precondition(lambda self: any(self.inbox.get(i) for i in self.alive))
    @rule(data=st.data(), status=st.sampled_from([b"200", b"500", b"garbage", b""]),
          partial=st.booleans())
    def reply(self, data, status, partial):
        identity = self.pick(data, [i for i in self.alive if self.inbox[i]])
        token = self.inbox[identity][0]
        if identity in self.compact:  # [0xA2 token status][body]
            self.inbox[identity].pop(0)
            self.broker.from_worker([identity, b"\xa2" + token + status, b"body"], self.now)
            return
        if partial and self.alive[identity] == 2:
            self.send_worker(identity, "partial", token, b"", b"part")
            return
        self.inbox[identity].pop(0)
        self.send_worker(identity, "reply", token, b"", status)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def heartbeat(self, data):
        self.send_worker(self.pick(data, self.alive), "heartbeat")

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def disconnect(self, data):
        identity = self.pick(data, self.alive)
        self.send_worker(identity, "disconnect")
        self.alive.pop(identity, None)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def dies_silently(self, data):
        del self.alive[self.pick(data, self.alive)]

    @precondition(lambda self: self.broker.workers.keys() & OWN.keys())
    @rule(data=st.data())
    def process_exits(self, data):
        identity = self.pick(data, self.broker.workers.keys() & OWN.keys())
        self.alive.pop(identity, None)
        self.broker.apply(f.Gone(identity), self.now)
        self.broker.apply(f.Expect(identity, OWN[identity], None), self.now)  # its successor

    @precondition(lambda self: self.broker.workers.keys() & OWN.keys())
    @rule(data=st.data())
    def retire(self, data):
        self.broker.apply(f.Retire(self.pick(data, self.broker.workers.keys() & OWN.keys())),
                          self.now)

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.5, 6.0]))
    def tick(self, dt):
        self.now += dt
        self.broker.tick(self.now)

    @rule(queue_limit=st.integers(0, 4), with_a=st.booleans())
    def reconfigure(self, queue_limit, with_a):
        self.broker.configure(BROKER, configured(queue_limit, with_a), self.now)

    @precondition(lambda self: not self.broker.stopping and len(self.sent) > 12)
    @rule()
    def shutdown(self):  # late in a run: after it, every request is "503"
        self.broker.stop_accepting(self.now, self.now + 5.0)  # (the daemon's stop_timeout)

    @precondition(lambda self: self.broker.stopping)
    @rule()
    def drained(self):  # the daemon's loop asks this every turn while it stops
        self.broker.drained(self.now)

    @rule(frames=st.lists(st.sampled_from([b"", b"MDPW01", b"MDPW02", b"MDPC01", b"\x01",
                                           b"\x02", b"\x03", b"a"]), min_size=1, max_size=6),
          backend=st.booleans())
    def garbage(self, frames, backend):
        if backend:
            self.broker.from_worker([b"x0", *frames], self.now)
        else:
            self.broker.from_client([b"g", *frames], self.now)

    # --- what must hold ----------------------------------------------------------------

    @invariant()
    def each_request_in_exactly_one_place(self):
        if not hasattr(self, "broker"):
            return
        broker = self.broker
        places = Counter()
        for name, route in broker.routes.items():
            assert route.name == name
            places.update(req.client for req in route.queue)
        counts = Counter()
        for identity, link in broker.workers.items():
            assert broker.routes.get(link.route.name) is link.route, "a link on a dropped route"
            counts[link.route.name] += 1
            places.update(req.client for req in link.inflight)
        for name, route in broker.routes.items():
            assert route.workers == counts[name]
            for link in (*route.idle, *route.spare):
                assert broker.workers.get(link.identity) is link and not link.retiring
        for client in self.sent:
            assert self.finals[client] <= 1, f"{client!r} answered twice"
            assert places[client] + self.finals[client] == 1, (
                f"{client!r}: {places[client]} places, {self.finals[client]} replies")
        assert self.partials_after_final == 0
        assert self.compact <= OWN.keys(), "the compact framing for a worker we did not fork"
        broker.facts.clear()  # (what the supervisor would be told)

    def teardown(self):
        if not hasattr(self, "broker"):
            return
        for _ in range(6):  # far past every queue_timeout and request_timeout
            self.now += 10.0
            self.broker.tick(self.now)
            if self.broker.stopping:
                assert self.broker.drained(self.now)  # past the drain deadline: always
        self.each_request_in_exactly_one_place()
        unanswered = [c for c in self.sent if self.finals[c] != 1]
        assert not unanswered, f"never answered: {unanswered}"


RoutingModel.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=100,
                                          deadline=None)
test_routing_model = RoutingModel.TestCase


def test_a_request_for_a_vanished_idle_worker_stays_on_a_held_route():
    """The case that once lost a request: the only worker of an unconfigured service has
    gone without DISCONNECT; the dispatch fails and the request must stay on a live route."""
    m = RoutingModel()
    m.start()
    m.ready(b"x0", b"c", 1, 0)
    del m.alive[b"x0"]
    m.request(b"c", 1)
    m.each_request_in_exactly_one_place()
    m.ready(b"x1", b"c", 2, 0)  # a new worker of the service picks it up
    assert m.inbox[b"x1"] and not m.finals
    m.teardown()
