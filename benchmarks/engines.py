"""Engines side by side; the same as `charwise bench` (python benchmarks/engines.py --help)."""

from charwise.bench import main

if __name__ == "__main__":
    main()
