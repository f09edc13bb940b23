"""What runs inside a worker process: the service API and the worker's own loop."""
