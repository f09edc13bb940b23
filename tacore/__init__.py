"""tacore: a supervisor daemon that brokers ZeroMQ requests to the worker processes it forks."""
__version__ = "0.1.0"
