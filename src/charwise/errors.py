"""The one exception type for errors a user can cause."""


class CharwiseError(Exception):
    """A problem with the user's input or files; the message names the problem and the fix."""
