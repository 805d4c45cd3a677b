"""charwise: character-level recurrent networks trained with AdaGrad and BPTT."""

import os

# OpenBLAS's threads, idle after a product, spin for 2^28 cycles (a tenth of a second) before
# they sleep, holding cores that the fast engine's own threads (sampling, validation) need next;
# 2^20 cycles (a third of a millisecond) outlasts the gaps between one training step's products.
# Read when OpenBLAS loads (numpy's when numpy is first imported, SciPy's, which the compiled
# kernels call, when they first run); a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
# The same for numba's OpenMP threads (GNU libgomp, read when numba first starts them): after a
# parallel step they spin 300,000 rounds by default, long enough to hold the cores through
# OpenBLAS's next product (a 2-thread lstm m 256 batch 32 update took 34 ms with it, 29 ms
# with 10,000 rounds, which still cover the gap between two steps).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from charwise.errors import CharwiseError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["CharwiseError", "__version__"]
