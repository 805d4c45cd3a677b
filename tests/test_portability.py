"""Portability: format versions, float32 files, byte order, engines reading each other's files."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charwise import checkpoint
from charwise.cli import main
from charwise.corpus import load_corpus
from charwise.errors import CharwiseError
from charwise.model import CharRNN
from charwise.train import CHECKPOINT, Trainer, read_samples
from charwise.vocab import Vocab
from runs import small_config, write_corpus

VOCAB = Vocab("\n abcdefghij.")


def model(dtype=np.float64) -> CharRNN:
    """A model with non-trivial weights (sig 0.5) so samples depend on every parameter."""
    return CharRNN.init(VOCAB, m=6, sig=0.5, seed=3, dtype=dtype)


def write_version_1(path, rnn: CharRNN) -> None:
    """A model file exactly as charwise 0.1 (format version 1) wrote it."""
    meta = {"format": checkpoint.FORMAT, "version": 1, **rnn.meta, "vocab": VOCAB.to_json()}
    payload = dict(rnn.params.items())
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **payload)


def test_new_files_carry_version_and_kind(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    out = tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(10, progress=False)
    kinds = {name: checkpoint.load(out / name)[1] for name in (CHECKPOINT, "final.npz", "best.npz")}
    assert {m["version"] for m in kinds.values()} == {checkpoint.VERSION} == {3}
    assert [m["kind"] for m in kinds.values()] == ["checkpoint", "model", "model"]


def test_version_1_models_still_load_and_sample(tmp_path):
    rnn = model()
    write_version_1(tmp_path / "v1.npz", rnn)
    rnn.save(tmp_path / "v2.npz")
    old, _ = CharRNN.load(tmp_path / "v1.npz")
    assert old.meta["version"] == 3 and old.meta["kind"] == "model"
    for a, b in zip(old.params.arrays(), rnn.params.arrays(), strict=True):
        assert np.array_equal(a, b)
    new, _ = CharRNN.load(tmp_path / "v2.npz")
    assert old.sample(300, seed=5) == new.sample(300, seed=5) == rnn.sample(300, seed=5)
    # a version-1 file is a model, never a resumable state
    out = tmp_path / "run"
    out.mkdir()
    write_version_1(out / CHECKPOINT, rnn)
    with pytest.raises(CharwiseError, match="a model, not a training checkpoint"):
        Trainer.resume(out, load_corpus(write_corpus(tmp_path / "w.txt")))


def test_float32_file_samples_with_the_reference_engine(tmp_path):
    rnn32 = model(np.float32)
    rnn32.save(tmp_path / "f32.npz")
    loaded, _ = CharRNN.load(tmp_path / "f32.npz")
    assert loaded.params.dtype == np.float32
    # the reference engine computes in float64: the same as the float64 copy of the weights
    rnn64 = CharRNN(VOCAB, loaded.params.astype(np.float64))
    text = loaded.sample(400, prime="abc", seed=9, engine="reference")
    assert text == rnn64.sample(400, prime="abc", seed=9, engine="reference")
    result = CliRunner().invoke(main, ["sample", str(tmp_path / "f32.npz"), "--seed", "9"])
    assert result.exit_code == 0 and len(result.stdout.rstrip("\n")) >= 900


def write_with_order(path, rnn: CharRNN, byteorder: str, fortran: bool) -> None:
    """A file written on a machine of the other byte order, or with Fortran-ordered arrays."""
    buf = io.BytesIO()
    arrays = {k: v.astype(v.dtype.newbyteorder(byteorder)) for k, v in rnn.params.items()}
    with zipfile.ZipFile(buf, "w") as zf:
        for name, a in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asfortranarray(a) if fortran else a)
            zf.writestr(f"{name}.npy", member.getvalue())
        meta = {
            "format": checkpoint.FORMAT,
            "version": 2,
            "kind": "model",
            "vocab": VOCAB.to_json(),
        }
        member = io.BytesIO()
        np.lib.format.write_array(member, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        zf.writestr("__meta__.npy", member.getvalue())
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("byteorder, fortran", [(">", False), ("<", True), (">", True)])
def test_big_endian_and_fortran_files(byteorder, fortran, tmp_path):
    rnn = model()
    write_with_order(tmp_path / "x.npz", rnn, byteorder, fortran)
    loaded, _ = CharRNN.load(tmp_path / "x.npz")
    for a, b in zip(loaded.params.arrays(), rnn.params.arrays(), strict=True):
        assert a.dtype == np.float64 and a.dtype.isnative and np.array_equal(a, b)
    assert loaded.sample(200, seed=1) == rnn.sample(200, seed=1)


def test_fast_float32_run_loads_in_the_reference_engine(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    out = tmp_path / "run"
    Trainer(corpus, small_config("fast", dtype="float32"), out).run(60, progress=False)
    for name in (CHECKPOINT, "final.npz", "best.npz"):
        loaded, _ = CharRNN.load(out / name)
        assert loaded.params.dtype == np.float32
        text = loaded.sample(200, seed=2, engine="reference")
        assert text == CharRNN(loaded.vocab, loaded.params.astype(np.float64)).sample(200, seed=2)
    with pytest.raises(CharwiseError, match="reference engine is float64 only"):
        Trainer.resume(out, corpus, engine="reference")


def test_reference_run_continues_and_samples_in_the_fast_engine(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path / "words.txt"))
    out = tmp_path / "run"
    Trainer(corpus, small_config("reference"), out).run(60, progress=False)
    loaded, _ = CharRNN.load(out / "best.npz")
    assert loaded.sample(200, seed=4, engine="fast") == loaded.sample(200, seed=4)
    trainer = Trainer.resume(out, corpus, engine="fast")
    trainer.run(120, progress=False)
    assert trainer.state.updates == 120 and np.isfinite(trainer.state.smooth_loss)
    assert checkpoint.load(out / CHECKPOINT)[1]["resumes"][-1]["changed"] == {
        "engine": ["reference", "fast"]
    }


FORMAT2 = Path(__file__).parent / "data" / "format2-run"


def test_format_2_run_loads_samples_and_resumes(tmp_path):
    """A real format-2 run directory (charwise 0.1): its models load and sample, and its
    checkpoint resumes on the whole corpus (format 2 had no held-out text), giving the same
    samples and passage as today's exercise run of the same length, and its numbers to within
    rounding."""
    out = tmp_path / "old"
    shutil.copytree(FORMAT2, out)
    corpus = load_corpus(FORMAT2 / "words.txt")
    for name in ("final.npz", "best.npz"):
        model, extra = CharRNN.load(out / name)
        assert model.meta["version"] == 3 and model.spec.family == "rnn"
        assert len(model.sample(50, seed=1)) == 50
    trainer = Trainer.resume(out, corpus)
    assert trainer.config.val_fraction == 0.0 and trainer.val_corpus is None
    assert trainer.state.updates == 30 and trainer.state.h_prev.shape == (8,)
    trainer.run(60, progress=False)
    fresh = tmp_path / "new"
    Trainer(corpus, small_config("reference", print_every=7, sample_every=20), fresh).run(
        60, progress=False
    )
    # Within rounding, not to the bit: the stored run was computed on another CPU, and numpy's
    # vectorised exp and log (the softmax) differ in the last bit between CPUs with and without
    # AVX-512 (seen: 1 ulp in a loss, 1e-13 relative in V after 60 updates); the README says so.
    assert (out / "best_passage.txt").read_bytes() == (fresh / "best_passage.txt").read_bytes()
    old, new = (np.loadtxt(d / "metrics.csv", delimiter=",", skiprows=1) for d in (out, fresh))
    for d in (out, fresh):
        assert (d / "metrics.csv").read_text().split("\n")[0] == "update,epoch,loss,smooth_loss"
    assert old.shape == new.shape == (60, 4) and np.array_equal(old[:, :2], new[:, :2])
    np.testing.assert_allclose(old[:, 2:], new[:, 2:], rtol=1e-12, atol=0)
    # samples.txt: the same samples; format 2 wrote the smooth loss in full (and "nan" before
    # update 1), this charwise with 4 decimals
    old, new = read_samples(out / "samples.txt"), read_samples(fresh / "samples.txt")
    assert [(s["update"], s["epoch"], s["text"]) for s in old] == [
        (s["update"], s["epoch"], s["text"]) for s in new
    ]
    for a, b in zip(old, new, strict=True):
        assert np.isnan(a["smooth_loss"]) == np.isnan(b["smooth_loss"])
        assert np.isnan(b["smooth_loss"]) or round(a["smooth_loss"], 4) == b["smooth_loss"]
    old, new = checkpoint.load(out / CHECKPOINT)[0], checkpoint.load(fresh / CHECKPOINT)[0]
    assert old.keys() == new.keys()
    for key, a in old.items():
        np.testing.assert_allclose(a, new[key], rtol=1e-10, atol=0, err_msg=key)
