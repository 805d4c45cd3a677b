"""`python -m charwise` and the `charwise` command: the CLI, with Ctrl-C during its imports
ending like any other Ctrl-C before training (one line, exit 130)."""

import signal
import sys


def run() -> None:
    try:
        from charwise.cli import main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut the exit short
        print("\ncharwise: interrupted before anything was saved", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
