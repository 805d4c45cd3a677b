"""`python -m charwise` and the `charwise` command: the CLI, with Ctrl-C during its imports
ending like any other Ctrl-C before training (one line, exit 130)."""

import sys

from charwise.errors import exit_interrupted


def run() -> None:
    try:
        from charwise.cli import main
    except KeyboardInterrupt:
        print("\ncharwise: interrupted before anything was saved", file=sys.stderr)
        exit_interrupted(130)
    main()


if __name__ == "__main__":
    run()
