"""The base of every error that means 'the input or setup is wrong', as opposed to a bug.

The CLI prints these as one line naming the problem (no traceback unless PIPELINES_DEBUG=1).
"""


class PipelinesError(Exception):
    """Bad input, configuration or environment; the message says what to fix."""
