"""charwise: character-level recurrent networks trained with AdaGrad and BPTT."""

import os

# OpenBLAS's threads, idle after a product, spin for 2^28 cycles (a tenth of a second) before
# they sleep, holding cores that the fast engine's own threads (sampling, validation) need next;
# 2^20 cycles (a third of a millisecond) outlasts the gaps between one training step's products.
# Read when OpenBLAS loads (numpy's when numpy is first imported, SciPy's, which the compiled
# kernels call, when they first run); a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from charwise.errors import CharwiseError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["CharwiseError", "__version__"]
