"""The routing core with a fake clock and a fake network: prefetch, requeue, drain, timeouts,
recycling, admission, and the facts it tells the supervisor. (tests/test_routing_model.py
checks the one-reply invariant over random runs; these name the cases.)"""

from tacore import facts as f
from tacore.brokering.broker import Broker
from tacore.brokering.routes import GONE
from tacore.config import BrokerConfig, ServiceConfig

BROKER = BrokerConfig(frontend=("ipc:///f",), backend="ipc:///b", heartbeat_interval=1.0,
                      heartbeat_liveness=3)


class Net:
    def __init__(self, **service):
        s = ServiceConfig(**{"name": "svc", "handler": "m:C", "workers": 2, "prefetch": 2,
                             "request_timeout": 5.0, "queue_timeout": 3.0, **service})
        self.replies, self.requests, self.gone, self.events = [], {}, set(), []
        self.broker = Broker(self.to_client, self.to_worker, self.events.append, BROKER,
                             {"svc": s})
        self.broker.start(0.0)
        self.clients = 0

    def to_client(self, frames):
        self.replies.append((frames[0], frames[4:]))  # [client][""][MDPC01][service][body]

    def to_worker(self, frames):
        if frames[0] in self.gone:
            return GONE
        if frames[3] == b"\x02":  # REQUEST: [id][""][MDPW01][0x02][token][""][body]
            self.requests.setdefault(frames[0], []).append((frames[4], frames[6:]))
        return None

    def ours(self, identity, limit=None):
        self.broker.apply(f.Expect(identity, b"svc", limit), 0.0)
        return self.worker(identity, b"\x01", b"svc")

    def worker(self, identity, command, *args, now=0.0):
        self.broker.from_worker([identity, b"", b"MDPW01", command, *args], now)
        facts, self.broker.facts = self.broker.facts, []
        return facts

    def request(self, body=b"x", now=0.0):
        self.clients += 1
        client = b"c%d" % self.clients
        self.broker.from_client([client, b"", b"MDPC01", b"svc", body], now)
        return client

    def reply(self, identity, status=b"200", now=0.0):
        token, body = self.requests[identity].pop(0)
        return self.worker(identity, b"\x03", token, b"", status, *body, now=now)

    def tell(self, fact, now=0.0):
        self.broker.apply(fact, now)
        facts, self.broker.facts = self.broker.facts, []
        return facts


def test_our_worker_is_ready_and_gets_prefetched_requests_in_order():
    net = Net()
    assert net.ours(b"w1") == [f.Ready(b"w1")]
    a, b = net.request(b"a"), net.request(b"b")
    assert [body for _, body in net.requests[b"w1"]] == [[b"a"], [b"b"]]  # prefetch 2
    net.reply(b"w1")
    assert net.replies == [(a, [b"200", b"a"])]
    assert net.broker.link(b"w1").inflight[0].client == b


def test_waiting_requests_of_a_dead_worker_go_to_another_and_only_the_running_one_fails():
    net = Net()
    net.ours(b"w1")
    running, waiting = net.request(b"run"), net.request(b"wait")
    net.ours(b"w2")
    net.tell(f.Gone(b"w1"))  # its process exited
    assert net.replies == [(running, [b"502", net.replies[0][1][1]])]
    assert [body for _, body in net.requests[b"w2"]] == [[b"wait"]]
    net.reply(b"w2")
    assert net.replies[-1] == (waiting, [b"200", b"wait"])


def test_a_retired_worker_finishes_what_it_runs_then_is_drained():
    net = Net()
    net.ours(b"w1")
    net.request()
    assert net.tell(f.Retire(b"w1")) == []  # still busy
    net.request()  # a new request waits: the retired worker takes nothing new
    assert len(net.requests[b"w1"]) == 1 and len(net.broker.routes[b"svc"].queue) == 1
    assert net.reply(b"w1") == [f.Drained(b"w1")]
    assert net.tell(f.Retire(b"w9")) == [f.Drained(b"w9")]  # not READY yet: nothing to finish


def test_a_retired_worker_that_says_ready_again_is_refused():
    net = Net()
    net.ours(b"w1")
    net.tell(f.Retire(b"w1"))
    net.worker(b"w1", b"\x05")  # DISCONNECT, then it reconnects
    assert net.worker(b"w1", b"\x01", b"svc") == []
    assert b"w1" not in net.broker.workers


def test_a_request_past_request_timeout_is_504_and_the_next_one_is_requeued():
    net = Net()
    net.ours(b"w1")
    first, second = net.request(b"1"), net.request(b"2")
    net.broker.tick(5.5)
    assert net.replies[0][0] == first and net.replies[0][1][0] == b"504"
    assert net.broker.facts == [f.TimedOut(b"w1", 5.5)]
    assert [r.client for r in net.broker.routes[b"svc"].queue] == [second]  # not failed


def test_silent_idle_worker_is_reported_and_dropped():
    net = Net()
    net.ours(b"w1")
    for t in (1.0, 2.0, 3.0, 4.0):
        net.broker.tick(t)
    assert f.HeartbeatTimeout(b"w1", 4.0) in net.broker.facts and b"w1" not in net.broker.workers


def test_the_request_limit_is_reported_once():
    net = Net()
    net.ours(b"w1", limit=2)
    net.request()
    net.request()
    assert net.reply(b"w1") == []
    assert net.reply(b"w1") == [f.LimitReached(b"w1", 2)]


def test_a_fatal_service_answers_503_at_once_and_a_recovered_one_queues_again():
    net = Net()
    net.tell(f.ServiceFatal(b"svc", True))
    net.request()
    assert net.replies[-1][1][0] == b"503" and b"service_fatal" in net.replies[-1][1][1]
    net.tell(f.ServiceFatal(b"svc", False))
    net.request()
    assert len(net.broker.routes[b"svc"].queue) == 1


def test_an_external_worker_may_not_join_our_service():
    net = Net()
    net.worker(b"x1", b"\x01", b"svc")
    assert b"x1" not in net.broker.workers
    assert net.events[-1].name == "worker.refused"


def test_a_send_to_a_vanished_worker_requeues_the_request():
    net = Net()
    net.ours(b"w1")
    net.ours(b"w2")
    net.gone.add(b"w1")  # its connection is gone, no one has said so yet
    client = net.request()
    assert [body for _, body in net.requests[b"w2"]] == [[b"x"]]
    assert b"w1" not in net.broker.workers and net.events[-1].name == "worker.lost"
    net.reply(b"w2")
    assert net.replies == [(client, [b"200", b"x"])]


class CompactNet(Net):
    """As Net, and it records requests in the compact framing too ([id][0xA1 token][body])."""

    def to_worker(self, frames):
        if frames[0] not in self.gone and frames[1][:1] == b"\xa1":
            self.requests.setdefault(frames[0], []).append((frames[1][1:], frames[2:]))
            self.compact.add(frames[0])
            return None
        return super().to_worker(frames)

    compact: set  # identities that were sent a compact request

    def __init__(self, **service):
        self.compact = set()
        super().__init__(**service)

    def compact_reply(self, identity, status=b"200", token=None):
        sent, body = self.requests[identity].pop(0)
        self.broker.from_worker([identity, b"\xa2" + (token or sent) + status, *body], 0.0)


def test_our_worker_that_offers_the_compact_framing_is_served_in_it():
    """A forked worker whose READY offers "tacore/1" gets compact requests, and its compact
    replies reach the client with the status frame restored."""
    net = CompactNet()
    net.broker.apply(f.Expect(b"w1", b"svc", None), 0.0)
    net.worker(b"w1", b"\x01", b"svc", b"tacore/1")
    client = net.request(b"hello")
    assert net.compact == {b"w1"} and len(net.requests[b"w1"][0][0]) == 8  # the token
    net.compact_reply(b"w1")
    assert net.replies == [(client, [b"200", b"hello"])]


def test_a_compact_reply_with_another_token_is_dropped():
    """A compact reply that does not carry the running request's token answers nothing."""
    net = CompactNet()
    net.broker.apply(f.Expect(b"w1", b"svc", None), 0.0)
    net.worker(b"w1", b"\x01", b"svc", b"tacore/1")
    net.request()
    net.compact_reply(b"w1", token=b"\0" * 8)
    assert net.replies == []
    assert any(e.name == "protocol.error" for e in net.events)


def test_an_external_worker_offering_the_compact_framing_gets_mdp():
    """Only workers the supervisor forked are served in the compact framing."""
    net = CompactNet(workers=0, handler=None, external=True)
    net.worker(b"x1", b"\x01", b"svc", b"tacore/1")
    net.request()
    assert net.compact == set() and net.requests[b"x1"][0][1] == [b"x"]  # a 7/MDP REQUEST


def test_large_frames_where_headers_belong_are_parsed_not_crashed_on():
    """A large last frame arrives as a zmq.Frame (frames.recv_passing): in a header's place
    it is read as bytes, and the peer gets the error its garbage earns."""
    import zmq
    net = CompactNet()
    net.broker.apply(f.Expect(b"w1", b"svc", None), 0.0)
    net.worker(b"w1", b"\x01", b"svc", b"tacore/1")
    big = zmq.Frame(b"m" * 70000)
    net.broker.from_client([b"c1", b"", b"MDPC01", big], 0.0)  # a service name of 70 kB
    net.broker.from_client([b"c2", b"", b"MDPC01", b"mmi.service", zmq.Frame(b"s" * 70000)], 0.0)
    net.broker.from_worker([b"w1", b"", b"MDPW01", zmq.Frame(b"\x04" * 70000)], 0.0)
    net.broker.from_worker([b"w1", zmq.Frame(b"\xa2" * 70000)], 0.0)
    assert [r[1][0] for r in net.replies] == [b"404", b"404"]


def test_shutdown_waits_for_requests_external_workers_hold_until_the_drain_deadline():
    """Stopping, the broker is drained only when no external worker holds a request: a reply
    that comes in time is delivered; at the deadline the rest are "502" and DISCONNECTed."""
    net = Net(external=True, workers=0)
    net.worker(b"x1", b"\x01", b"svc")
    net.worker(b"x2", b"\x01", b"svc")
    first, second = net.request(b"a"), net.request(b"b")
    queued = net.request(b"c")  # both workers hold one: this one waits in the queue
    net.broker.stop_accepting(1.0, drain_until=6.0)
    assert net.replies[-1][0] == queued and net.replies[-1][1][0] == b"503"
    assert not net.broker.drained(2.0) and net.broker.next_deadline() <= 6.0
    (holder,) = [w for w, held in net.requests.items() if held[0][1] == [b"a"]]
    net.reply(holder, now=2.0)
    assert net.replies[-1] == (first, [b"200", b"a"])
    assert not net.broker.drained(5.9)
    disconnects = []
    net.to_worker = lambda frames: disconnects.append(frames[0]) if frames[3] == b"\x05" else None
    net.broker.to_worker = net.to_worker
    assert net.broker.drained(6.0)
    assert net.replies[-1][0] == second and net.replies[-1][1][0] == b"502"
    assert b"shutting_down" in net.replies[-1][1][1] and len(disconnects) == 1
    assert net.broker.drained(7.0) and len(net.replies) == 3
    # The passed drain deadline is no deadline any more (the daemon's loop would spin on it):
    assert net.broker.next_deadline() == min(net.broker.next_heartbeat, net.broker.next_expiry)


def test_large_bodies_pass_as_frames_both_ways():
    """A large request body reaches our worker, and its large reply body the client, as the
    zmq.Frame it came in (no copy); a large status frame from a Majordomo worker is "502"."""
    import zmq
    net = CompactNet()
    net.broker.apply(f.Expect(b"w1", b"svc", None), 0.0)
    net.worker(b"w1", b"\x01", b"svc", b"tacore/1")
    body = zmq.Frame(b"q" * 70000)
    net.broker.from_client([b"c1", b"", b"MDPC01", b"svc", body], 0.0)
    token, sent = net.requests[b"w1"].pop(0)
    assert sent[0] is body
    answer = zmq.Frame(b"a" * 70000)
    net.broker.from_worker([b"w1", b"\xa2" + token + b"200", answer], 0.0)
    assert net.replies[-1][1][0] == b"200" and net.replies[-1][1][1] is answer
    net = CompactNet()
    net.broker.apply(f.Expect(b"w2", b"svc", None), 0.0)
    net.worker(b"w2", b"\x01", b"svc")  # a Majordomo worker of ours
    client = net.request()
    token, _ = net.requests[b"w2"].pop(0)
    net.worker(b"w2", b"\x03", token, b"", zmq.Frame(b"s" * 70000))
    assert net.replies[-1] == (client, [b"502", net.replies[-1][1][1]])
    assert b"bad_reply" in net.replies[-1][1][1]


def test_a_compact_reply_may_have_no_body_and_one_without_request_is_refused():
    """[0xA2 token status] alone answers the request; a compact reply when the worker holds
    nothing is refused as a Majordomo one is (DISCONNECT, link dropped)."""
    net = CompactNet()
    net.broker.apply(f.Expect(b"w1", b"svc", None), 0.0)
    net.worker(b"w1", b"\x01", b"svc", b"tacore/1")
    client = net.request()
    token, _ = net.requests[b"w1"].pop(0)
    net.broker.from_worker([b"w1", b"\xa2" + token + b"204"], 0.0)
    assert net.replies == [(client, [b"204"])]
    net.broker.from_worker([b"w1", b"\xa2" + token + b"200", b"again"], 0.0)
    assert b"w1" not in net.broker.workers and len(net.replies) == 1
