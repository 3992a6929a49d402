"""The one exception type for bad input, so every entry point can report it the same way."""


class DracInputError(ValueError):
    """Input that cannot be used: the message names the file or folder, what was expected and
    what was found. Entry points print it on stderr and exit non-zero without a traceback."""
