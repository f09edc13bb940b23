"""Exceptions and exit codes shared by every part of tacore."""


class BadRequest(Exception):
    """Raised by a service handler when the request itself is wrong: the caller gets a "400"."""


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class StartupError(Exception):
    """The daemon cannot start for a reason outside the configuration file; ``setting`` names
    the key that leads to the resource, e.g. "[broker] frontend", so the message can say where
    to change it."""

    def __init__(self, setting: str, message: str, exit_code: int):
        self.setting, self.exit_code = setting, exit_code
        super().__init__(message)


# sysexits.h, as the daemon's documented exit codes.
EX_UNAVAILABLE = 69  # an endpoint is in use, or another daemon owns the runtime directory
EX_CANTCREAT = 73  # a directory or socket file cannot be created
EX_SOFTWARE = 70  # an internal error (a bug); the workers are killed first
EX_CONFIG = 78  # any configuration problem, including a group the daemon's user cannot use
