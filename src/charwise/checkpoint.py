"""Checkpoints: one .npz per model, arrays plus a JSON metadata entry, atomic, no pickle."""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from charwise.errors import CharwiseError

FORMAT = "charwise-checkpoint"
VERSION = 1
META_KEY = "__meta__"  # the JSON metadata, stored as a uint8 array of UTF-8 bytes


def save(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays and metadata to path atomically: temporary file, fsync, rename, fsync dir."""
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, **meta}
    payload = {**arrays, META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata from a checkpoint; never unpickles; one-line errors when broken."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CharwiseError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CharwiseError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    what = f"{path} is not a charwise checkpoint"
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        if raw[:2] != b"PK":
            reason = "not an .npz file"
        elif "pickle" in str(exc):
            reason = "it holds pickled objects, which charwise never loads"
        else:
            reason = "truncated or corrupt"
        raise CharwiseError(f"{what} ({reason}); point to a file written by charwise") from None
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError
    except (KeyError, ValueError, UnicodeDecodeError):
        raise CharwiseError(
            f"{what} (no charwise metadata); point to a .npz from charwise"
        ) from None
    if meta.get("version") != VERSION:
        raise CharwiseError(
            f"{path} has checkpoint format version {meta.get('version')}, this charwise reads "
            f"version {VERSION}; upgrade charwise or retrain"
        )
    return arrays, meta
