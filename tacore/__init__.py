"""tacore: a supervisor daemon that brokers ZeroMQ requests to the worker processes it forks."""

from tacore.errors import BadRequest

__version__ = "0.1.0"
__all__ = ["BadRequest", "__version__"]
