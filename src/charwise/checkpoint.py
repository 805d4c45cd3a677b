"""Checkpoints: one .npz per model, arrays plus a JSON metadata entry, atomic, no pickle."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from tokenize import TokenError

import numpy as np

from charwise.errors import CharwiseError
from charwise.safeio import write_atomic

FORMAT = "charwise-checkpoint"
VERSION = 3  # 2: metadata names its kind; 3: model families, optimisers, batches, validation
KINDS = ("model", "checkpoint")
META_KEY = "__meta__"  # the JSON metadata, stored as a uint8 array of UTF-8 bytes
MAX_BYTES = 2 * 1024**3  # most bytes a checkpoint may hold or unpack to (zip-bomb guard)
DTYPES = ("<f8", ">f8", "<f4", ">f4", "|u1")  # array types charwise writes; nothing else loads
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # both read with bounded output
HEADER_BYTES = 1 << 16  # a .npy header must fit in the first 64 KiB of its member


def save(path: str | Path, arrays: dict[str, np.ndarray], meta: dict, kind: str = "model") -> None:
    """Write arrays and metadata to path atomically: temporary file, fsync, rename, fsync dir
    (safeio.write_atomic), with the user's umask."""
    path = Path(path)
    meta = {**meta, "format": FORMAT, "version": VERSION, "kind": kind}
    payload = {**arrays, META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **payload))


def load(
    path: str | Path, max_bytes: int = MAX_BYTES, accept=None, only_meta: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata from a checkpoint; never unpickles; one-line errors when broken.

    Every size is checked against `max_bytes` from the zip directory and the .npy headers
    before anything is decompressed or allocated (zip bombs, crafted shapes); each array is
    read straight into its own memory. accept(meta) -> set of names: read the metadata first
    and refuse any other array before reading one.
    """
    path = Path(path)
    what = f"{path} is not a charwise checkpoint"
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_directory(infos, size, max_bytes, what)
            if accept is not None:  # the metadata first: it says which arrays may follow
                metas = [info for info in infos if info.filename == META_KEY + ".npy"]
                meta = _read_meta(_read_npy(zf, metas[0], what) if metas else None, what)
                if only_meta:
                    return {}, meta
                known = accept(meta) | {META_KEY}
                unknown = sorted(i.filename[:-4] for i in infos if i.filename[:-4] not in known)
                if unknown:
                    raise CharwiseError(
                        f"{what}: it holds unexpected arrays {unknown[:5]}; "
                        "point to a model written by charwise"
                    )
            arrays = {info.filename[:-4]: _read_npy(zf, info, what) for info in infos}
    except FileNotFoundError:
        raise CharwiseError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CharwiseError(f"{path} is a folder; point to a checkpoint .npz file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError):
        reason = "not an .npz file: it is empty" if size == 0 else "truncated or corrupt"
        with path.open("rb") as f:
            if size and f.read(2) != b"PK":
                reason = "not an .npz file"
        raise CharwiseError(f"{what} ({reason}); point to a file written by charwise") from None
    except OSError as exc:
        raise CharwiseError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    meta = _read_meta(arrays.pop(META_KEY, None), what)
    return arrays, meta


def read_meta(path: str | Path, max_bytes: int = MAX_BYTES) -> dict:
    """The metadata of a checkpoint without reading its arrays (listing runs)."""
    return load(path, max_bytes, accept=lambda meta: set(), only_meta=True)[1]


def _check_directory(infos: list[zipfile.ZipInfo], size: int, max_bytes: int, what: str) -> None:
    """Names, compression methods and claimed sizes of the zip members, before any is read."""
    names = [info.filename for info in infos]
    total = sum(info.file_size for info in infos)
    if total > max_bytes or size > max_bytes:
        raise CharwiseError(
            f"{what}: it would unpack to {max(total, size):,} bytes, over the "
            f"{max_bytes:,}-byte limit (a zip bomb?); point to a file written by charwise"
        )
    bad = [n for n in names if not n.endswith(".npy") or "/" in n or "\\" in n]
    if bad or len(set(names)) != len(names):
        raise CharwiseError(f"{what}: unexpected entries {bad or 'with duplicate names'}")
    odd = [i.filename for i in infos if i.compress_type not in COMPRESSIONS or i.flag_bits & 1]
    if odd:
        raise CharwiseError(f"{what}: entries {odd} are encrypted or compressed unreadably")


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> np.ndarray:
    """One .npy member: header checked (plain numeric dtype, size matches) before the data,
    which is read straight into the array (one copy in memory, in blocks of 1 MiB)."""
    name = info.filename[:-4]
    with zf.open(info) as member:
        head = member.read(min(info.file_size, HEADER_BYTES))
        f = io.BytesIO(head)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
        try:
            shape, fortran, dtype = read_header(f)
        except (SyntaxError, TokenError, TypeError, RecursionError, MemoryError) as exc:
            raise ValueError("unreadable .npy header") from exc  # numpy's parser, fed garbage
        if dtype.hasobject:
            raise CharwiseError(
                f"{what}: array {name} holds pickled objects, which charwise never loads"
            )
        if dtype.str not in DTYPES:
            raise CharwiseError(f"{what}: array {name} has dtype {dtype}, not one charwise writes")
        start = f.tell()
        size = math.prod(shape) * dtype.itemsize if all(d >= 0 for d in shape) else -1
        if size != info.file_size - start:
            raise CharwiseError(f"{what}: array {name} claims shape {shape} but holds other data")
        raw = np.empty(size, dtype=np.uint8)
        got = len(head) - start
        raw[:got] = np.frombuffer(head, np.uint8, offset=start)
        while got < size:  # the declared size caps what is decompressed
            chunk = member.read(min(size - got, 1 << 20))
            if not chunk:
                raise EOFError
            raw[got : got + len(chunk)] = np.frombuffer(chunk, np.uint8)
            got += len(chunk)
        if member.read(1):
            raise zipfile.BadZipFile("member longer than declared")
    a = raw.view(dtype).reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:
        a = a.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return a


def _read_meta(raw: np.ndarray | None, what: str) -> dict:
    """The JSON metadata entry: a charwise format tag and a version this code reads."""
    try:
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError
        meta = json.loads(raw.tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CharwiseError(
            f"{what} (no charwise metadata); point to a .npz from charwise"
        ) from None
    if meta.get("version") not in UPGRADES and meta.get("version") != VERSION:
        raise CharwiseError(
            f"{what.split(' is ')[0]} has checkpoint format version {meta.get('version')!r}, "
            f"this charwise reads versions 1 to {VERSION}; upgrade charwise or retrain"
        )
    while meta["version"] != VERSION:  # older files: bring their metadata up to date
        UPGRADES[meta["version"]](meta)
    if meta.get("kind") not in KINDS:
        raise CharwiseError(f"{what} (unknown kind {meta.get('kind')!r})")
    return meta


def _upgrade_1(meta: dict) -> None:
    """Version 1 wrote models only (final.npz, best.npz), without a kind."""
    meta.update(version=2, kind="model")


def _upgrade_2(meta: dict) -> None:
    """Version 2 knew only the exercise (one-layer rnn, AdaGrad, one stream), trained on the
    whole corpus (no held-out part) and read files as they were (no newline cleaning)."""
    if isinstance(meta.get("config"), dict):
        meta["config"].setdefault("val_fraction", 0.0)
    corpus = meta.get("corpus")
    if isinstance(corpus, dict) and isinstance(corpus.get("source"), dict):
        corpus["source"].setdefault("newline", "keep")
    meta["version"] = 3


UPGRADES = {1: _upgrade_1, 2: _upgrade_2}  # version -> function that lifts its metadata one version
