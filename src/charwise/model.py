"""CharModel: a vocabulary and a model's parameters; sampling, saving and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charwise import checkpoint
from charwise.engines import get_engine, why_not
from charwise.errors import CharwiseError
from charwise.models import FAMILIES, SIG, ModelSpec, cell
from charwise.params import Params
from charwise.state import check_model_arrays, model_shapes
from charwise.vocab import Vocab

DOC_SEPARATOR = "\n---\n"  # between documents (or passages) printed together


class CharModel:
    """A character-level model (SPEC.md) together with the vocabulary it reads."""

    def __init__(self, vocab: Vocab, params: Params, meta: dict | None = None):
        self.vocab = vocab
        self.params = params
        self.meta = dict(meta or {})  # hyper-parameters and training facts, saved with it

    @classmethod
    def init(
        cls,
        vocab: Vocab,
        model: str = "rnn",
        m: int = 100,
        layers: int = 1,
        sig: float = SIG,
        seed: int = 1,
        dtype=np.float64,
    ) -> CharModel:
        spec = ModelSpec(model, K=len(vocab), m=m, layers=layers)
        return cls(vocab, Params.init(spec, seed, sig, dtype), {"m": m, "sig": sig, "seed": seed})

    @property
    def spec(self) -> ModelSpec:
        return self.params.spec

    def engine(self, name: str = "auto", device: str | None = None):
        """The engine module to sample with: `name`, or for auto the fastest that runs it (the
        torch engine moved to `device` when one is given)."""
        if name == "auto":
            fast = why_not("fast", self.spec, "adagrad", 1, 0.0, "float64") is None
            name = "fast" if fast else "reference"
        elif why_not(name, self.spec, "adagrad", 1, 0.0, "float64"):
            raise CharwiseError(
                f"the {name} engine does not yet run a {self.spec.describe()} model; "
                "use --engine auto"
            )
        engine = get_engine(name)
        if device is not None and hasattr(engine, "use_device"):
            engine.use_device(device)
        return engine

    def default_start(self) -> str:
        """The character fed first when there is no prime: end-of-document, newline, or [0]."""
        if self.vocab.end is not None:
            return self.vocab.end
        return "\n" if "\n" in self.vocab.index else self.vocab.chars[0]

    def start_indices(self, prime: str | None = None) -> np.ndarray:
        """What the model reads before its first draw: the prime (after its end character, for
        a document model), or the default start; the last one is fed with the first draw."""
        start = self.default_start() if not prime else (self.vocab.end or "") + prime
        return self.vocab.encode(start)

    def sample_indices(
        self,
        n: int,
        prime: str | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        rng: np.random.Generator | None = None,
        engine: str = "reference",
        h0: tuple | np.ndarray | None = None,
        stop: bool = True,
    ) -> np.ndarray:
        """n indices (fewer if stopped at the end-of-document char) after reading `prime`."""
        if not temperature >= 0 or not 0.0 < top_p <= 1.0:
            raise CharwiseError("need --temperature >= 0 and 0 < --top-p <= 1")
        eng = self.engine(engine)
        rng = np.random.default_rng() if rng is None else rng
        primed = self.start_indices(prime)
        state = self.spec.zero_state() if h0 is None else h0
        state = eng.advance(self.params, state, primed[:-1]) if len(primed) > 1 else state
        uniforms = rng.random(n)
        end = self.vocab.end_index if stop else -1
        return eng.sample(self.params, state, int(primed[-1]), n, uniforms, temperature, top_p, end)

    def sample_documents(self, count: int, max_length: int, **kw) -> list[str]:
        """count documents, each from h = 0 and the end character, ended by it or max_length."""
        docs = []
        for _ in range(count):
            indices = self.sample_indices(max_length, **kw)
            if len(indices) and indices[-1] == self.vocab.end_index:
                indices = indices[:-1]
            docs.append(self.vocab.decode(indices))
        return docs

    def sample(self, n: int, prime: str | None = None, seed: int | None = None, **kw) -> str:
        """Text: the prime (if any) followed by n generated characters."""
        indices = self.sample_indices(n, prime, rng=np.random.default_rng(seed), **kw)
        return (prime or "") + self.vocab.decode(indices)

    def save(self, path: str | Path, extra: dict[str, np.ndarray] | None = None, **meta) -> None:
        arrays = dict(self.params.items()) | (extra or {})
        meta = {**self.meta, **meta, "model": self.spec.to_json(), "vocab": self.vocab.to_json()}
        checkpoint.save(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> tuple[CharModel, dict[str, np.ndarray]]:
        """The model and any extra arrays stored with it (training state)."""
        arrays, meta = checkpoint.load(path, accept=lambda meta: known_names(meta, path))
        vocab = Vocab.from_json(meta.get("vocab"))
        family, layers = _model_meta(meta, path)
        spec_names = ModelSpec(family, K=1, m=1, layers=layers).names()
        missing = [name for name in spec_names if name not in arrays]
        if missing:
            raise CharwiseError(f"{path} lacks parameter arrays {missing}; it is not a model")
        b, c = arrays["b"], arrays["c"]
        if b.ndim != 1 or c.ndim != 1 or not len(b) or not len(vocab):
            raise CharwiseError(f"{path}: a model needs m >= 1 and K >= 1; the file is corrupt")
        m = max(1, len(b) // cell(family).GATES)
        spec = ModelSpec(family, K=len(vocab), m=m, layers=layers)
        params = Params({name: arrays.pop(name) for name in spec.names()}, spec)
        dtype = params.dtype
        if dtype not in (np.float32, np.float64):
            raise CharwiseError(f"{path}: parameters are {dtype}, not float")
        check_model_arrays(spec, dict(params.items()) | arrays, dtype, path)
        x0 = meta.get("x0", 0)
        if type(x0) is not int or not 0 <= x0 < len(vocab):
            raise CharwiseError(f"{path}: start character {x0!r} is not in the vocabulary")
        return cls(vocab, params, meta), arrays


def known_names(meta: dict, path) -> set[str]:
    """Every array name a model file of this family and depth may hold."""
    family, layers = _model_meta(meta, path)
    return set(model_shapes(ModelSpec(family, K=1, m=1, layers=layers)))


def _model_meta(meta: dict, path) -> tuple[str, int]:
    """Family and layer count recorded in a model file (format 3; older files: the rnn)."""
    model = meta.get("model", {"family": "rnn", "layers": 1})
    family = model.get("family") if isinstance(model, dict) else None
    layers = model.get("layers") if isinstance(model, dict) else None
    if family not in FAMILIES or type(layers) is not int or not 1 <= layers <= 1000:
        raise CharwiseError(f"{path}: unknown model {model!r} in its metadata; update charwise")
    return family, layers


CharRNN = CharModel  # the exercise's name for it
