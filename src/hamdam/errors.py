"""User-facing errors.

A ``HamdamError`` carries one paragraph that names the file or setting at fault and what to do
about it. The CLI prints it without a traceback and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class HamdamError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class DataError(HamdamError):
    """A training file is missing or malformed."""


class ModelLoadError(HamdamError):
    """Model weights or a tokenizer could not be loaded."""
