"""Import a service's handler: the operator's own code afresh each time, libraries once.

Workers are forked from the daemon, which imported every handler while validating the
configuration. Left alone, a worker would run the code as it was when the daemon started, and
a restart or reload would never pick up a deploy. So before importing a handler, the modules
of the operator's own code (pure-Python modules outside the Python installation and its
site-packages, and not tacore's) are forgotten and imported again from disk. Libraries stay
imported once and shared by all workers: re-importing C extensions is unsafe, and upgrading a
library means restarting the daemon.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from typing import Any, Callable

INSTALLED = tuple(sorted(os.path.join(path, "") for path in
                          {sysconfig.get_path(name) for name in
                           ("stdlib", "platstdlib", "purelib", "platlib")} |
                          {sys.prefix, sys.base_prefix, sys.exec_prefix}))


def load_handler(path: str, fresh: bool = True) -> Callable[[], Any]:
    """Import "module:callable" and return the callable; raise if missing or not callable."""
    if fresh:
        forget_own_modules()
    module_name, _, attr = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    return obj


def forget_own_modules() -> None:
    importlib.invalidate_caches()  # new files on disk are seen
    for name, module in list(sys.modules.items()):
        if _is_own_code(name, getattr(module, "__file__", None)):
            del sys.modules[name]


def _is_own_code(name: str, file: str | None) -> bool:
    return (file is not None and file.endswith(".py") and not file.startswith(INSTALLED)
            and name != "tacore" and not name.startswith("tacore.") and name != "__main__")
