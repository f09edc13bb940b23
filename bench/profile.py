"""Where the broker's time goes: tacored under load, sampled with py-spy.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py [--clients 32] [--seconds 10] [--setup tacore] [--out FILE]

Starts the setup (as bench/broker.py does), loads it with ``--clients`` closed-loop clients and
records the daemon with ``py-spy record --idle=false`` (busy samples only, native frames off),
then prints the functions with the most samples, by own time and by total time (``--out``
keeps py-spy's raw collapsed stacks).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from broker import SETUPS, body_of, measure  # noqa: E402

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--body", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--setup", default="tacore", choices=[k for k in SETUPS if "tacore" in k])
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcp-") as tmp:
        setup = SETUPS[args.setup](Path(tmp), args.workers)
        raw = args.out or Path(tmp) / "stacks.txt"
        try:
            spy = subprocess.Popen([PY_SPY, "record", "--pid", str(setup.broker_pid), "--idle",
                                    "--format", "raw", "--rate", "250", "--nonblocking",
                                    "--duration", str(int(args.seconds)), "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = measure(setup, args.clients, body_of(args.body), args.seconds)
            spy.wait(args.seconds + 30)
        finally:
            setup.stop()
        print(f"{args.setup}: {result['rps']} req/s, {result['cpu_us']} µs of daemon CPU per "
              f"request ({args.clients} clients, {args.workers} workers)")
        report(raw.read_text(), args.top)


def report(collapsed: str, top: int) -> None:
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] + " " + f.split("(")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")]
        n = int(count)
        samples += n
        if "poll" in frames[-1] and "zmq" in stack.split(";")[-1]:
            continue  # waiting in the poller (idle), not work
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    busy = sum(own.values())
    print(f"{samples} samples, {busy} busy ({busy / max(samples, 1):.0%})")
    for title, counter in (("own", own), ("total", total)):
        print(f"\n{title:>6} % of busy  function")
        for frame, n in counter.most_common(top):
            print(f"{n / max(busy, 1):>14.1%}  {frame}")


if __name__ == "__main__":
    main()
