"""Engines side by side; the same as `charwise bench` (python benchmarks/engines.py --help)."""

import sys

from charwise.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]], prog_name="benchmarks/engines.py bench")
