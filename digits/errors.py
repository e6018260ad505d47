"""The one exception type users see: a clear message plus the exit code the CLI uses.

Exit codes follow the house rule: 2 for bad usage (a value the user typed), 1 for a
failure at run time (a file, a download, a check that did not pass).
"""


class DigitsError(Exception):
    """A user-facing failure. ``str(err)`` is the one-paragraph message."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(DigitsError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class RuntimeMissing(DigitsError):
    """An optional runtime (OpenVINO, onnxruntime-gpu's providers) is not installed here: a
    bench cell that needs it is listed as missing, and only ``--strict`` fails the run for it."""
