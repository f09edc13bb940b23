"""Signals and /proc: how the supervisor acts on the processes it did not fork itself."""

from __future__ import annotations

import os

import psutil

from tacore.supervision.handles import WorkerProcess


class System:
    """The supervisor's only ways to touch processes besides spawning: signals and /proc.
    A test gives the supervisor a fake one."""

    @staticmethod
    def kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it exited already; its pidfd will tell the loop

    @classmethod
    def signal(cls, w: WorkerProcess, sig: int) -> None:
        """To the worker, or to its whole process group (a command worker's children too)."""
        cls.kill(-w.pid if w.group else w.pid, sig)

    @staticmethod
    def catches(pid: int, sig: int) -> bool:
        """Whether the process has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
        try:
            with open(f"/proc/{pid}/status") as f:
                mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (OSError, StopIteration, ValueError):
            return False
        return bool(mask & (1 << (sig - 1)))

    @staticmethod
    def proc_view(pid: int) -> tuple[str, str | None]:
        """What /proc shows of a process tacore cannot ask for its stack: each thread's state,
        the kernel function it waits in (wchan) and its current system call; and where the
        main thread is, as blocked_at."""
        lines, where = [f"/proc view of pid {pid} (no stack: the program did not register "
                        "one on SIGUSR1)"], None
        try:
            tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
        except OSError as e:
            return f"/proc view unavailable: {e}", None
        for tid in tasks:
            base = f"/proc/{pid}/task/{tid}"
            try:
                stat = open(f"{base}/stat").read()
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                state = stat[stat.rindex(")") + 2]
                wchan = open(f"{base}/wchan").read().strip() or "-"
                call = open(f"{base}/syscall").read().split()
            except OSError:
                continue
            syscall = "running" if call[:1] == ["running"] else f"syscall {call[0]}" if call \
                else "-"
            lines.append(f"thread {tid} ({name}): state {state}, wchan {wchan}, {syscall}")
            if tid == str(pid):
                where = f"wchan {wchan}, {syscall}"
        return "\n".join(lines), where

    @staticmethod
    def is_frozen(pid: int) -> bool:
        """True if the process is stopped (SIGSTOP, or a tracer): it can answer no signal."""
        try:
            return psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                    psutil.STATUS_TRACING_STOP)
        except psutil.Error:
            return False

    @staticmethod
    def figures(w: WorkerProcess) -> dict | None:
        """CPU, memory, threads and descriptors of a worker (None if it cannot be read)."""
        try:
            with w.ps.oneshot():
                return {"cpu_percent": w.ps.cpu_percent(None), "rss_bytes": w.ps.memory_info().rss,
                        "threads": w.ps.num_threads(), "fds": w.ps.num_fds()}
        except (psutil.Error, AttributeError):  # (no ps: it was gone at the fork already)
            return None
