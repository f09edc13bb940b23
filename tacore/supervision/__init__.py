"""Worker processes: their states, restart policy and lifecycle. Knows nothing of ZeroMQ."""
