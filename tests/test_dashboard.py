"""The dashboard: its queries, plots and page without a browser, then in headless Chromium
against a real daemon (skipped where Chromium or chromedriver is missing)."""

import json
import os
import signal
import time
import urllib.request
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from tacore.daemon.web import Plots
from tacore.observability import dashboard
from tacore.persistence.store import Store
from tests.browser import browser  # noqa: F401 (a fixture)
from tests.helpers import wait_until
from tests.test_observability import free_port

pytestmark = pytest.mark.timeout(120)
SVG = "{http://www.w3.org/2000/svg}"


def fetch(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


# --- queries and plots, without a daemon ---------------------------------------------------

NOW = 1_800_000_000.0


@pytest.fixture
def sampled(tmp_path):
    """A store with two services and two worker slots sampled every 5 s for the 20 minutes
    before NOW; the service counter restarts (a daemon restart) 10 minutes before NOW."""
    store = Store(tmp_path / "t.db", 14, 100)
    store.open(0.0)
    now = NOW
    for i in range(240):
        ts = now - 1200 + i * 5
        count = (i if i < 120 else i - 120) * 50  # 10 requests/s, reset at i = 120
        store.add_samples("service_samples", [(ts, "a", count, 0, 0, 1, 0.001, 0.002, 0.004),
                                              (ts, "b", 0, 0, 0, 1, None, None, None)])
        store.add_samples("worker_samples", [(ts, "a", slot, 100 + slot, "READY", 10.0 * slot,
                                              1000 * (slot + 1), 2, 10, i)
                                             for slot in (0, 1)])
    store.flush(1.0)
    yield store
    store.close()


def test_series_are_one_indexed_range_query_each(sampled):
    """Requests/s from the counter's increase (no negative rate across a reset), p99 and the
    per-slot averages, each read by a range scan of the table's ts index."""
    now, store = NOW, sampled
    rates = [(b, r) for name, b, r, _ in store.service_series(now - 3600, 30) if name == "a"]
    assert all(r == pytest.approx(10.0) for _, r in rates if r is not None)
    assert len(rates) == 40 and sum(r is None for _, r in rates) <= 1
    workers = store.worker_series(now - 3600, 30)
    assert {(name, slot) for name, slot, *_ in workers} == {("a", 0), ("a", 1)}
    assert {(slot, cpu, rss) for _, slot, _, cpu, rss in workers} \
        == {(0, 0.0, 1000), (1, 10.0, 2000)}
    for table in ("service_samples", "worker_samples"):
        plan = store.db.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE ts >= 0")
        assert f"USING INDEX {table}_ts" in str(plan.fetchall())


class CountingStore:
    """A store that records the ``since`` of every series query."""

    def __init__(self, store):
        self.store, self.queries = store, []

    def service_series(self, since, step, until):
        self.queries.append(("service", since))
        return self.store.service_series(since, step, until)

    def worker_series(self, since, step, until):
        self.queries.append(("worker", since))
        return self.store.worker_series(since, step, until)


def test_plots_read_the_hour_in_pieces_then_only_new_buckets(sampled):
    """The first drawing reads the newest CHUNK seconds, each next one CHUNK more of the
    past until the hour is read; then the same sample count reads nothing, a new one only
    the newest buckets; the result equals one full read."""
    now = NOW
    counting = CountingStore(sampled)
    plots = Plots(counting)
    plots.render(1, now)
    assert [q for q, _ in counting.queries] == ["service", "worker"]
    assert counting.queries[1][1] >= now - Plots.CHUNK - dashboard.STEP
    assert not plots.complete(now)
    drawings = 1
    while not plots.complete(now):
        plots.render(1, now)
        drawings += 1
        assert drawings <= dashboard.SPAN / Plots.CHUNK + 1
        assert all(since >= now - dashboard.SPAN - 2 * dashboard.STEP
                   for _, since in counting.queries[-4:])
    full = plots.render(1, now)
    queries = len(counting.queries)
    assert plots.render(1, now) is full and len(counting.queries) == queries  # nothing read
    counting.store.add_samples("worker_samples", [(now + 40, "a", 0, 100, "READY", 50.0, 1000,
                                                   2, 10, 0)])
    counting.store.flush(2.0)
    second = plots.render(2, now + 45)
    read = [since for _, since in counting.queries[queries:]]
    assert len(read) == 2 and min(read) >= now - 60  # the newest buckets only
    whole = Plots(counting.store)
    whole.CHUNK = dashboard.SPAN + dashboard.STEP  # one read of everything
    whole.render(2, now + 45)
    assert second == whole.render(2, now + 45) and second != full


def test_plots_are_svg_with_gaps_and_escaped_names():
    """Each service gets four charts; a gap in the samples splits a line; names are escaped."""
    end = 1_800_000_000.0
    points = [(end - 600 + i * 30, 1.0) for i in range(5)] + \
             [(end - 120 + i * 30, 2.0) for i in range(3)]
    text = dashboard.plots({"<b>x</b>": {"rate": points, "p99": [(end - 30, 0.01)]}},
                           {"<b>x</b>": {0: {"cpu": points, "rss": []}}}, end)
    assert "<b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    charts = ET.fromstring(f"<div>{text}</div>").findall(".//svg")
    assert len(charts) == 4
    rate, p99, cpu, rss = charts
    assert len(rate.findall("polyline")) == 2  # split at the gap
    assert len(p99.findall("circle")) == 1 and not rss.findall("polyline")
    assert dashboard.plots({}, {}, end).startswith('<p class="empty">')


# --- the page over HTTP, without a browser -------------------------------------------------

class Rows(HTMLParser):
    """The worker rows of the page: data-worker -> the text of each cell."""

    def __init__(self):
        super().__init__()
        self.rows, self.current = {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-worker" in attrs:
            self.current = self.rows.setdefault(attrs["data-worker"], [])
        elif tag == "td" and self.current is not None:
            self.current.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.current[-1] += data


SERVICES = {"tool": {"handler": "tests.workers:Tool", "workers": 2},
            "echo": {"handler": "tacore.services.echo:Echo"}}


def test_the_page_without_javascript_shows_every_worker(start_daemon):
    """The server-rendered page, at the address daemon.started prints, has a row per worker
    with its pid and state, a Content-Security-Policy that allows this origin only, and its
    assets are served."""
    port = free_port()
    d = start_daemon(SERVICES, http={"listen": f"127.0.0.1:{port}"},
                     state={"sample_interval": 0.2})
    base = f"http://127.0.0.1:{port}"
    assert d.events("daemon.started")[0]["dashboard"] == base + "/"
    status, headers, body = fetch(base + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Server-Timing"].startswith("build;dur=")
    page = Rows()
    page.feed(body.decode())
    expected = {f"{name}/{w['slot']}": w["pid"] for name in SERVICES for w in d.workers(name)}
    assert {key: int(cells[3]) for key, cells in page.rows.items()} == expected
    assert all(cells[2] == "READY" for cells in page.rows.values())
    for path, (_, kind) in dashboard.ASSETS.items():
        status, headers, asset = fetch(base + path)
        assert status == 200 and headers["Content-Type"] == kind and asset
        assert path.encode() in body  # the page refers to each


def test_dashboard_json_has_verdicts_figures_and_events_newest_first(start_daemon):
    """/api/dashboard: each service's verdict, rate and latency after load, and the events
    with the newest first."""
    from tests.mdp import call

    port = free_port()
    d = start_daemon(SERVICES, http={"listen": f"127.0.0.1:{port}"},
                     state={"sample_interval": 0.2})
    for i in range(30):
        assert call(f"ipc://{d.runtime}/frontend.sock", "tool", "echo", i)[0] == "200"

    def figures():
        view = json.loads(fetch(f"http://127.0.0.1:{port}/api/dashboard?events=5")[2])
        tool = next(s for s in view["services"] if s["name"] == "tool")
        return view if tool["by_status"] == {"200": 30} and tool["p99"] else None
    view = wait_until(figures, 10, "a sample with the replies")
    tool = next(s for s in view["services"] if s["name"] == "tool")
    assert tool["healthy"] and tool["problem"] is None and tool["ready"] == 2
    assert 0 < tool["p50"] <= tool["p99"] < 1 and tool["per_second"] is not None
    assert view["healthy"] and len(view["events"]) == 5
    ids = [e["id"] for e in view["events"]]
    assert ids == sorted(ids, reverse=True)
    assert {w["pid"] for w in view["workers"]} == {w["pid"] for n in SERVICES
                                                   for w in d.workers(n)}


# --- in a real browser ---------------------------------------------------------------------

# The tables are replaced in place every second: read them in one script, not element by
# element (an element read half-way may be gone).
ROWS = """return Object.fromEntries(Array.from(document.querySelectorAll(arguments[0]),
    tr => [tr.dataset.worker || tr.dataset.service,
           {cells: Array.from(tr.cells, td => td.textContent), class: tr.className}]))"""
EVENTS = """return Array.from(document.querySelectorAll('#events li'), li => ({
    key: li.dataset.event, name: li.querySelector('.name').textContent,
    summary: li.querySelector('summary') ? li.querySelector('summary').textContent : null,
    open: li.querySelector('details') ? li.querySelector('details').open : null}))"""


def rows(driver, table: str = "workers") -> dict:
    """data-worker (or data-service) -> its cells' text, as the browser shows them now."""
    return {key: row["cells"] for key, row in
            driver.execute_script(ROWS, f"#{table} tbody tr").items()}


def classes(driver, table: str = "workers") -> dict:
    return {key: row["class"] for key, row in
            driver.execute_script(ROWS, f"#{table} tbody tr").items()}


def resources(driver) -> list[str]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")


def errors(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_browser_shows_every_worker_and_a_replacement_pid_within_3s(start_daemon, browser,
                                                                     tmp_path):
    """Chromium lists every worker; after a SIGKILL the replacement's pid is on the page
    within 3 s without a reload; no console error; every request went to the daemon."""
    port = free_port()
    d = start_daemon(SERVICES, http={"listen": f"127.0.0.1:{port}"},
                     state={"sample_interval": 0.5})
    origin = f"http://127.0.0.1:{port}"
    browser.get(origin + "/")
    expected = {f"{name}/{w['slot']}": str(w["pid"]) for name in SERVICES
                for w in d.workers(name)}
    assert {key: cells[3] for key, cells in rows(browser).items()} == expected
    wait_until(lambda: f"{origin}/api/dashboard" in resources(browser), 10, "a refresh")
    browser.execute_script("window.notReloaded = true")

    old = int(expected["tool/0"])
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    shown = wait_until(lambda: (pid := rows(browser)["tool/0"][3]) not in ("-", str(old))
                       and pid, 3, "the replacement's pid on the page")
    assert time.monotonic() - t0 < 3
    assert int(shown) == d.workers("tool")[0]["pid"] != old
    assert browser.execute_script("return window.notReloaded === true")

    wait_until(lambda: "signal SIGKILL" in rows(browser)["tool/0"][10], 5, "the last exit")
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert errors(browser) == []
    loaded = resources(browser)
    assert {f"{origin}/dashboard.js", f"{origin}/dashboard.css"} <= set(loaded)
    assert [url for url in loaded if not url.startswith(origin + "/")] == []


def test_browser_shows_failing_services_late_starts_and_a_blocked_stack(start_daemon, browser):
    """A service that fails in start() is shown FATAL and failing; a start past half its
    start_timeout stands out; the start_timeout event shows where start() blocked, and its
    stack on a click, which stays open when new events arrive."""
    from selenium.webdriver.common.by import By

    port = free_port()
    d = start_daemon({"tool": {"handler": "tests.workers:Tool"},
                      "crashes": {"handler": "tests.workers:CrashesInStart", "max_restarts": 1},
                      "stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 4,
                                "max_restarts": 1}},  # (two late starts to catch, then FATAL)
                     http={"listen": f"127.0.0.1:{port}"}, wait_ready=False)
    browser.get(f"http://127.0.0.1:{port}/")
    wait_until(lambda: "late" in classes(browser).get("stuck/0", ""), 12,
               "stuck/0 marked as a late start")
    assert " of 4.0s" in rows(browser)["stuck/0"][2]

    def failing(name):
        return "failing" in classes(browser, "services")[name] \
            and "FATAL" in rows(browser, "services")[name][2]
    wait_until(lambda: failing("crashes") and failing("stuck"), 20, "both services failing")
    assert rows(browser)["crashes/0"][2].startswith("FATAL: ")
    assert browser.find_element(By.ID, "verdict").text.startswith("unhealthy: ")
    assert classes(browser, "services")["tool"] == "ok"

    def start_timeout():
        return next((e for e in browser.execute_script(EVENTS)
                     if e["name"] == "worker.start_timeout"), None)
    event = wait_until(start_timeout, 5, "the start_timeout event")
    assert "BLOCKS-HERE" in event["summary"] and "tests/workers.py" in event["summary"]
    item = f'#events li[data-event="{event["key"]}"]'
    stack = browser.find_element(By.CSS_SELECTOR, f"{item} pre")
    assert not stack.is_displayed()
    browser.find_element(By.CSS_SELECTOR, f"{item} summary").click()
    assert stack.is_displayed() and "File " in stack.text and "in start" in stack.text

    os.kill(d.workers("tool")[0]["pid"], signal.SIGKILL)  # new events arrive
    wait_until(lambda: browser.execute_script(EVENTS)[0]["name"]
               in ("worker.ready", "worker.spawned", "worker.backoff", "worker.exited"),
               5, "new events on top")
    again = next(e for e in browser.execute_script(EVENTS) if e["key"] == event["key"])
    assert again["open"] is True  # re-rendered, still open
    assert errors(browser) == []
