"""charwise: character-level recurrent networks trained with AdaGrad and BPTT."""

from charwise.errors import CharwiseError

__version__ = "0.1.0"

__all__ = ["CharwiseError", "__version__"]
