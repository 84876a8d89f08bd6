"""The user-error convention.

Anything a user can cause (bad file, bad value) raises :class:`UserError`;
the CLI prints its message as one line on stderr and exits with status 2,
without a traceback. Programming errors stay ordinary exceptions.
"""


class UserError(Exception):
    """An error caused by user input, reported as one clear line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
