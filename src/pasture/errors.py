"""The one exception users see: a message naming the file or key and the problem.

The CLI prints it as one line and exits with status 2; nothing else is caught there.
"""


class PastureError(Exception):
    """A user-caused problem (bad file, bad shape, unknown name). The message is the whole story."""
