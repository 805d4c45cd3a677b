"""The one exception type for errors a user can cause, and the exit after a Ctrl-C."""

import os
import signal
import sys
from typing import NoReturn


class CharwiseError(Exception):
    """A problem with the user's input or files; the message names the problem and the fix."""


def exit_interrupted(status: int) -> NoReturn:
    """Exit with `status` (130 after SIGINT, 143 after SIGTERM) once what charwise writes is
    closed: a further Ctrl-C is ignored, and the interpreter's own shutdown is skipped. That
    shutdown restores SIGINT's default action (a second Ctrl-C would kill the process, status
    -2), and under `python -m` CPython ends by killing itself with SIGINT whenever a Ctrl-C
    happened to land inside a string eval (a namedtuple's or dataclass's generated code), even
    one that was caught: together 10 runs in 150 with Ctrl-C at random moments."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
