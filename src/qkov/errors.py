"""One exception type for user mistakes: the CLI prints its message as one line, no traceback."""


class QkovError(Exception):
    """A bad input: the message says what is wrong and how to mend it."""
