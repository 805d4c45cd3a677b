"""Hostile and broken files: each is refused with a one-line CharwiseError, or loads validly."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charwise import checkpoint
from charwise.corpus import load_corpus
from charwise.errors import CharwiseError
from charwise.model import CharRNN
from charwise.train import CHECKPOINT, Trainer
from runs import small_config, write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A small finished run: checkpoint.npz, final.npz, best.npz, logs."""
    out = tmp_path_factory.mktemp("run")
    corpus = load_corpus(write_corpus(out.parent / "words.txt"))
    Trainer(corpus, small_config("reference"), out).run(30, progress=False)
    return out


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=True)
    return buf.getvalue()


def meta_array(meta) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def build_zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def crafted(path: Path, change=None, meta_change=None) -> bytes:
    """The bytes of the checkpoint at `path`, re-zipped after editing its arrays or meta."""
    arrays, meta = checkpoint.load(path)
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    if meta_change:
        meta_change(meta)
    members["__meta__.npy"] = npy_bytes(meta_array(meta))
    if change:
        change(members)
    return build_zip(members)


def set_array(name: str, value) -> callable:
    return lambda members: members.__setitem__(f"{name}.npy", npy_bytes(np.asarray(value)))


def poison(name: str, value: float) -> callable:
    """Put one non-finite value into an array of the checkpoint."""

    def change(members):
        a = np.load(io.BytesIO(members[f"{name}.npy"]))
        a.flat[3] = value
        members[f"{name}.npy"] = npy_bytes(a)

    return change


def header_claiming(shape: tuple, dtype: str = "<f8", payload: bytes = b"\0" * 16) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def patch_directory(data: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite a field at `offset` in every central-directory entry of a zip."""
    out, pos = bytearray(data), data.find(b"PK\x01\x02")
    while pos >= 0:
        out[pos + offset : pos + offset + len(value)] = value
        pos = data.find(b"PK\x01\x02", pos + 4)
    return bytes(out)


def claim_size(data: bytes, size: int) -> bytes:
    """Claim an uncompressed size for every entry in the zip directory (a zip-bomb claim)."""
    return patch_directory(data, 24, struct.pack("<I", size))


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]


def real_bomb() -> bytes:
    return build_zip({"b.npy": b"\0" * (64 << 20)}, zipfile.ZIP_DEFLATED)  # 64 MiB of zeros


def first_meta_change(key, value):
    return lambda meta: meta.__setitem__(key, value)


# (id, file bytes from the run's checkpoint, message fragment) for checkpoint.load
RAW_CASES = [
    ("zero-length", lambda ck: b"", "it is empty"),
    ("plain-text", lambda ck: b"hello world\n", "not an .npz file"),
    ("png-header", lambda ck: b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not an .npz file"),
    ("truncated-half", lambda ck: ck[: len(ck) // 2], "truncated or corrupt"),
    ("truncated-last-byte", lambda ck: ck[:-1], "truncated or corrupt"),
    ("truncated-100-bytes", lambda ck: ck[:100], "truncated or corrupt"),
    ("flipped-data-byte", lambda ck: flip(ck, ck.index(b"\x93NUMPY") + 130), "corrupt"),
    ("zip-bomb-claim-3GiB", lambda ck: claim_size(ck, 3 << 30), "over the 2,147,483,648-byte"),
    ("bzip2-member", lambda ck: build_zip({"a.npy": b"x"}, zipfile.ZIP_BZIP2), "unreadably"),
    ("encrypted-flag", lambda ck: patch_directory(ck, 8, b"\x01\x00"), "are encrypted"),
    ("member-in-folder", lambda ck: build_zip({"../a.npy": b"x"}), "unexpected entries"),
    ("member-not-npy", lambda ck: build_zip({"a.pkl": b"x"}), "unexpected entries"),
    (
        "pickled-object-array",
        lambda ck: build_zip({"a.npy": npy_bytes(np.array([{"x": 1}], dtype=object))}),
        "pickled objects",
    ),
    (
        "header-claims-1e12-floats",
        lambda ck: build_zip({"a.npy": header_claiming((10**12,))}),
        "claims shape",
    ),  # fmt: skip
    (
        "header-negative-shape",
        lambda ck: build_zip({"a.npy": header_claiming((-2,))}),
        "claims shape",
    ),  # fmt: skip
    ("unicode-array", lambda ck: build_zip({"a.npy": npy_bytes(np.array(["abc"]))}), "dtype <U3"),
    ("int64-array", lambda ck: build_zip({"a.npy": npy_bytes(np.arange(3))}), "dtype int64"),
    (
        "structured-array",
        lambda ck: build_zip({"a.npy": npy_bytes(np.zeros(2, dtype=[("a", "<f8")]))}),
        "not one charwise writes",
    ),
    ("bad-npy-magic", lambda ck: build_zip({"a.npy": b"NOTNUMPY" * 4}), "truncated or corrupt"),
    (
        "npy-version-3",
        lambda ck: build_zip({"a.npy": b"\x93NUMPY\x03\x00" + b"\0" * 8}),
        "corrupt",
    ),  # fmt: skip
    (
        "no-metadata",
        lambda ck: build_zip({"a.npy": npy_bytes(np.zeros(2))}),
        "no charwise metadata",
    ),  # fmt: skip
    (
        "metadata-not-json",
        lambda ck: build_zip({"__meta__.npy": npy_bytes(np.frombuffer(b"{oops", np.uint8))}),
        "no charwise metadata",
    ),
    (
        "metadata-json-list",
        lambda ck: build_zip({"__meta__.npy": npy_bytes(meta_array([1]))}),
        "no charwise metadata",
    ),  # fmt: skip
    (
        "metadata-wrong-format-tag",
        lambda ck: build_zip({"__meta__.npy": npy_bytes(meta_array({"format": "x"}))}),
        "no charwise metadata",
    ),
    (
        "metadata-version-99",
        lambda ck: build_zip(
            {"__meta__.npy": npy_bytes(meta_array({"format": checkpoint.FORMAT, "version": 99}))}
        ),
        "format version 99",
    ),
]


@pytest.mark.parametrize("case, make, message", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_broken_checkpoint_files(case, make, message, run, tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(make((run / CHECKPOINT).read_bytes()))
    with pytest.raises(CharwiseError, match=message.replace("(", r"\(")) as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)


def test_real_zip_bomb_is_refused_before_unpacking(tmp_path):
    path = tmp_path / "bomb.npz"
    path.write_bytes(real_bomb())
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CharwiseError, match="would unpack to 67,108,864 bytes, over the"):
        checkpoint.load(path, max_bytes=16 << 20)


def test_missing_and_folder(tmp_path):
    with pytest.raises(CharwiseError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "none.npz")
    with pytest.raises(CharwiseError, match="is a folder"):
        checkpoint.load(tmp_path)


# (id, checkpoint edit, message from CharRNN.load, message from Trainer.resume)
MODEL_CASES = [
    (
        "W-wrong-shape",
        dict(change=set_array("W", np.zeros((8, 9)))),
        "array W has shape (8, 9)",
        "W has shape (8, 9)",
    ),  # fmt: skip
    (
        "W-float32-in-float64",
        dict(change=set_array("W", np.zeros((8, 8), np.float32))),
        "dtype float32",
        "dtype float32",
    ),  # fmt: skip
    (
        "U-holds-NaN",
        dict(change=poison("U", np.nan)),
        "array U holds NaN",
        "U holds NaN",
    ),  # fmt: skip
    (
        "G_W-holds-inf",
        dict(change=poison("G_W", np.inf)),
        "array G_W holds NaN",
        "G_W holds NaN",
    ),  # fmt: skip
    ("b-scalar", dict(change=set_array("b", np.float64(1))), "needs m >= 1", "b has shape ()"),
    (
        "W-missing",
        dict(change=lambda m: m.pop("W.npy")),
        "lacks parameter arrays ['W']",
        "holds arrays",
    ),  # fmt: skip
    (
        "extra-array",  # refused before any array is read (issue 13)
        dict(change=set_array("evil", np.zeros(3))),
        "unexpected arrays ['evil']",
        "holds arrays",
    ),  # fmt: skip
    (
        "vocab-unsorted",
        dict(meta_change=first_meta_change("vocab", {"chars": "ba"})),
        "invalid vocabulary",
        "invalid vocabulary",
    ),  # fmt: skip
    (
        "vocab-not-a-dict",
        dict(meta_change=first_meta_change("vocab", 7)),
        "invalid vocabulary",
        "invalid vocabulary",
    ),  # fmt: skip
    (
        "vocab-one-more-char",
        dict(meta_change=lambda m: m["vocab"].update(chars=m["vocab"]["chars"] + "~")),
        "array c has shape (27,)",
        "different vocabulary",
    ),  # fmt: skip
    (
        "vocab-empty",
        dict(meta_change=lambda m: m["vocab"].update(chars="")),
        "needs m >= 1 and K >= 1",
        "different vocabulary",
    ),  # fmt: skip
    (
        "x0-out-of-range",
        dict(meta_change=first_meta_change("x0", 999)),
        "start character 999",
        None,
    ),  # fmt: skip
    (
        "rng-state-garbage",
        dict(meta_change=first_meta_change("sample_rng", {"bit_generator": "MT"})),
        None,
        "bad training metadata",
    ),  # fmt: skip
    (
        "updates-negative",
        dict(meta_change=first_meta_change("updates", -5)),
        None,
        "inconsistent training counters",
    ),  # fmt: skip
    (
        "config-m-string",
        dict(meta_change=lambda m: m["config"].update(m="8")),
        None,
        "have wrong types",
    ),  # fmt: skip
    (
        "config-unknown-key",
        dict(meta_change=lambda m: m["config"].update(evil=1)),
        None,
        "unknown settings ['evil']",
    ),  # fmt: skip
    (
        "corpus-fingerprint",
        dict(meta_change=first_meta_change("corpus_sha256", "0" * 64)),
        None,
        "SHA-256 mismatch",
    ),  # fmt: skip
    (
        "kind-model",
        dict(meta_change=first_meta_change("kind", "model")),
        None,
        "a model, not a training",
    ),  # fmt: skip
]


@pytest.mark.parametrize(
    "case, edit, model_msg, resume_msg", MODEL_CASES, ids=[c[0] for c in MODEL_CASES]
)
def test_crafted_checkpoints(case, edit, model_msg, resume_msg, run, tmp_path):
    data = crafted(run / CHECKPOINT, **edit)
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    if model_msg is None:
        CharRNN.load(path)  # a valid model, though not a valid training state
    else:
        with pytest.raises(CharwiseError, match=_literal(model_msg)) as err:
            CharRNN.load(path)
        assert "\n" not in str(err.value)
    if resume_msg is not None:
        out = tmp_path / "run"
        shutil.copytree(run, out)
        (out / CHECKPOINT).write_bytes(data)
        with pytest.raises(CharwiseError, match=_literal(resume_msg)) as err:
            Trainer.resume(out, load_corpus(run.parent / "words.txt"))
        assert "\n" not in str(err.value)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# ---- the text corpus loader ---------------------------------------------------------------
CORPUS_CASES = [
    ("empty", b"", {}, "is empty"),
    ("png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", {}, "not valid utf-8 at byte offset 0"),
    ("nul-in-utf8", b"hello\0world", {}, "looks binary (a NUL character near byte offset 0)"),
    ("nul-with-replace", b"\xffhi\0", {"errors": "replace"}, "looks binary"),
    ("latin-1-as-utf8", "café".encode("latin-1"), {}, "not valid utf-8 at byte offset 3"),
    ("utf16-as-utf8", "hi".encode("utf-16"), {}, "not valid utf-8 at byte offset 0"),
    ("unknown-encoding", b"abc", {"encoding": "no-such"}, "unknown encoding 'no-such'"),
    ("bytes-codec", b"abc", {"encoding": "rot13"}, "unknown encoding 'rot13'"),
]


@pytest.mark.parametrize("case, data, kw, message", CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_broken_corpus_files(case, data, kw, message, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    with pytest.raises(CharwiseError, match=_literal(message)) as err:
        load_corpus(path, **kw)
    assert "\n" not in str(err.value)


def test_corpus_that_loads(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("hi".encode("utf-16"))
    assert load_corpus(path, encoding="utf-16").head(2) == "hi"
    path.write_bytes(b"ab" * (1 << 20))  # one 2 MB line
    assert len(load_corpus(path)) == 2 << 20
    with pytest.raises(CharwiseError, match="corpus not found"):
        load_corpus(tmp_path / "none.txt")


# ---- property-based: random and mutated bytes -----------------------------------------------
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def load_or_refuse(path: Path) -> None:
    """checkpoint.load and CharRNN.load give a CharwiseError or a result that is valid."""
    try:
        arrays, meta = checkpoint.load(path)
    except CharwiseError as exc:
        assert "\n" not in str(exc)
        return
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == checkpoint.VERSION
    assert all(a.dtype.str in ("<f8", "<f4", "|u1") for a in arrays.values())
    try:
        model, _ = CharRNN.load(path)
    except CharwiseError:
        return
    assert all(np.isfinite(a).all() for a in model.params.arrays())
    assert len(model.sample(5, seed=0)) == 5


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes(data, tmp_path):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(data)
    load_or_refuse(path)
    path.write_bytes(b"PK\x03\x04" + data)  # past the magic number, into the zip parser
    load_or_refuse(path)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


edits_strategy = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)


@FUZZ
@given(edits=edits_strategy, cut=st.none() | st.integers(0, 1 << 20))
def test_mutated_checkpoint_bytes(edits, cut, run, tmp_path):
    for name in (CHECKPOINT, "best.npz"):
        path = tmp_path / name
        path.write_bytes(mutate((run / name).read_bytes(), edits, cut))
        load_or_refuse(path)


@settings(FUZZ, max_examples=100)
@given(member=st.integers(0, 100), edits=edits_strategy, cut=st.none() | st.integers(0, 4000))
def test_mutated_members_with_valid_zip_crc(member, edits, cut, run, tmp_path):
    """Mutations inside the .npy data, re-zipped so the CRC passes: the deep checks must hold."""

    def change(members):
        name = sorted(members)[member % len(members)]
        members[name] = mutate(members[name], edits, cut)

    data = crafted(run / CHECKPOINT, change=change)
    path = tmp_path / "mutated.npz"
    path.write_bytes(data)
    load_or_refuse(path)
    out = tmp_path / "run"
    if not out.exists():
        shutil.copytree(run, out)
    (out / CHECKPOINT).write_bytes(data)
    try:
        trainer = Trainer.resume(out, load_corpus(run.parent / "words.txt"))
    except CharwiseError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(np.isfinite(a).all() for a in trainer.state_arrays().values())


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_random_corpus_bytes(data, tmp_path):
    """Read as it is with --newline keep; by default with CR LF and CR as LF, and no BOM."""
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    try:
        corpus = load_corpus(path, newline="keep")
    except CharwiseError as exc:
        assert "\n" not in str(exc)
        return
    text = data.decode("utf-8")
    assert corpus.vocab.decode(corpus.data) == text and "\0" not in text
    clean = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    try:
        normalized = load_corpus(path)
    except CharwiseError as exc:  # nothing left (a file of BOMs)
        assert not clean and "is empty" in str(exc)
        return
    assert normalized.vocab.decode(normalized.data) == clean
