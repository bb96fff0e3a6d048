"""The one exception family that the CLI turns into a clear message and exit code 2."""


class PcamError(Exception):
    """A user-facing error: the message names the file or key to fix."""


class ConfigError(PcamError):
    """A config file or key is wrong."""


class DataError(PcamError):
    """Input data is missing, malformed or inconsistent."""
