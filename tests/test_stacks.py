"""Turning a faulthandler dump into a stack with source lines and a 'blocked at' line."""

import threading

from tacore.runtime import child, spec
from tacore.supervision.stacks import annotate

HERE = __file__


def dump(main: str, other: str) -> str:
    return (f"Thread {other} (most recent call first):\n"
            f'  File "{threading.__file__}", line 327 in wait\n'
            f'  File "{HERE}", line 5 in helper\n'
            "\n"
            f"Current thread {main} (most recent call first):\n"
            f'  File "{threading.__file__}", line 327 in wait\n'
            f'  File "{HERE}", line 3 in start\n'
            f'  File "{child.__file__}", line 50 in run\n'
            '  File "/usr/lib/python3/multiprocessing/process.py", line 108 in run\n')


def test_blocked_at_is_the_main_threads_own_frame():
    """blocked_at skips the stdlib frame and names this file's line in the main thread."""
    text, blocked_at = annotate(dump("0x00007f0000000001", "0x00007f0000000002"),
                                "0x00007f0000000001")
    assert blocked_at == f"{HERE}:3 in start: import threading"
    assert "[main thread]" in text
    assert "    import threading" in text  # source added under the frame


def test_daemon_frames_below_the_entry_point_are_cut():
    """Frames copied from the daemon by fork are not shown."""
    text, _ = annotate(dump("0x1", "0x2"), "0x1")
    assert "multiprocessing/process.py" not in text
    assert "from before the fork" in text


def test_unknown_main_thread_gives_no_blocked_at():
    """Without the worker's main-thread header, no frame is blamed."""
    text, blocked_at = annotate(dump("0x1", "0x2"), None)
    assert blocked_at is None and "Current thread 0x1" in text


def test_the_spec_names_the_workers_entry_file():
    """The daemon finds the entry point without importing the worker's module."""
    assert spec.ENTRY_FILE == child.__file__ and spec.DUMP_SIGNAL == child.DUMP_SIGNAL
