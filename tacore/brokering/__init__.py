"""The Majordomo broker: protocol codec, worker registry and routing. Knows nothing of processes."""
