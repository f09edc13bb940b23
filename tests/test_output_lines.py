"""Splitting a worker's output into lines (supervision/output.py), without a process."""

import os

from tacore.supervision.output import LINES_PER_SECOND, MAX_LINE, OutputReader, Ring


def reader():
    got = []
    r, w = os.pipe()
    os.close(w)
    return OutputReader(r, "stdout", 7, Ring(), lambda s, line, p: got.append((line, p))), got


def test_lines_partial_lines_long_lines_and_structured_ones():
    rd, got = reader()
    rd._split(b"a\n" + b"x" * (MAX_LINE + 10) + b'\n{"event": "worker.log", "message": "m"}\npar',
              0.0)
    rd._split(b"tial\n", 0.1)
    lines = [line for line, _ in got]
    assert lines[0] == "a" and lines[1] == "x" * MAX_LINE + " [cut]" and lines[3] == "partial"
    assert got[2][1] == {"event": "worker.log", "message": "m"}  # the worker's own log line
    assert [entry[4] for entry in rd.ring.lines] == lines and rd.ring.lines[0][2] == 7


def test_over_the_limit_lines_are_counted_not_kept_and_reported_once():
    rd, got = reader()
    rd._split(b"".join(b"%d\n" % i for i in range(LINES_PER_SECOND + 5)), 0.0)
    assert len(got) == LINES_PER_SECOND and rd.dropped == 5
    rd._split(b"a\nb\nc", 0.5)  # still over, in the same second: counted in bulk
    assert len(got) == LINES_PER_SECOND and rd.dropped == 7
    rd._split(b"d\n", 1.2)  # a new second: the count is reported, then the line is kept
    assert got[-2] == (None, {"dropped": 7}) and got[-1] == ("cd", None)
    rd.flush(1.3)
    assert rd.dropped == 0


def test_a_ring_is_bounded_in_lines_and_in_bytes():
    from tacore.supervision.output import RING, RING_BYTES

    ring = Ring()
    for i in range(RING + 10):
        ring.add(1, "stdout", str(i))
    assert len(ring.lines) == RING and ring.lines[-1][4] == str(RING + 9)
    for _ in range(200):
        ring.add(1, "stdout", "x" * MAX_LINE)
    assert ring.size <= RING_BYTES and ring.size == sum(len(e[4]) for e in ring.lines)
