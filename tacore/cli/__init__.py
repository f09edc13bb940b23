"""Command-line entry points: ``tacored`` (the daemon) and ``tacorectl`` (the operator's tool)."""
