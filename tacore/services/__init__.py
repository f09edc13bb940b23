"""Built-in services: ``echo`` and ``ta``."""
