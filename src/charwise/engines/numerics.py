"""numba, set up once for every compiled engine, and the vectorisable float64 math they share.

numba caches compiled kernels next to the source; the folder is chosen here before numba is
first imported (numba_cache_dir). The functions below avoid libm calls, so that LLVM
vectorises the loops that call them (a scalar exp or tanh call per entry costs several times
the arithmetic here).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from llvmlite import ir as llvmlite_ir

from charwise import safeio


def numba_cache_dir(package_writable: bool, environ) -> str | None:
    """The folder for numba's on-disk cache when this package's folder is read-only.

    numba caches next to the source by default; an installed, read-only package would
    otherwise recompile on every start. None: keep numba's choice (the user's
    NUMBA_CACHE_DIR, or __pycache__ beside this file).
    """
    if environ.get("NUMBA_CACHE_DIR") or package_writable:
        return None
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(base) / "charwise" / "numba")


CACHE_DIR = numba_cache_dir(os.access(Path(__file__).parent, os.W_OK), os.environ)
if CACHE_DIR:
    os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR  # read by numba when it is first imported

import numba  # noqa: E402  (after the cache folder is chosen)

if CACHE_DIR:
    numba.config.CACHE_DIR = CACHE_DIR  # also when numba was imported before charwise


def cache_folder() -> Path:
    """Where numba keeps the engine's compiled kernels."""
    if numba.config.CACHE_DIR:
        return Path(numba.config.CACHE_DIR)
    return Path(__file__).parent / "__pycache__"


def sources_stamp() -> str:
    """The engine's source files as numba's cache sees them (modification time and size)."""
    files = sorted(Path(__file__).parent.glob("*.py"))
    return "".join(f"{f.name} {f.stat().st_mtime_ns} {f.stat().st_size}\n" for f in files)


SOURCES = "charwise-sources.txt"  # in the cache folder: the sources its kernels came from


def drop_stale_kernels(folder: Path, stamp: str) -> None:
    """Remove the engine's compiled kernels from numba's cache folder where they were compiled
    from other sources than `stamp` (sources_stamp). numba stamps each function's entry with its
    own file alone, so a kernel compiled before a file it calls changed (kernels.py's block
    around matvec.py's loops) would still be loaded: the old code of the changed file. Only
    files of this package's modules are removed (numba's folder may be the user's, shared)."""
    record = folder / SOURCES
    try:
        if record.read_text() == stamp:
            return
    except OSError:  # none yet
        pass
    here = Path(__file__).parent
    modules = {f.stem for f in here.glob("*.py")}
    beside = folder.name == "__pycache__"  # numba's default: this package's folder alone
    try:
        for f in folder.glob("**/*.nb[ic]"):
            ours = beside or f.parent.name.startswith(here.name + "_")
            if ours and f.name.split(".")[0] in modules:
                f.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        safeio.write_text(record, stamp)
    except OSError:  # a read-only folder: numba does not write there either
        pass


drop_stale_kernels(cache_folder(), sources_stamp())

# Fused multiply-add only: one rounding instead of two in a*b + c. No reassociation, no
# approximate functions, no NaN/inf assumptions (full fastmath would break all of these).
FASTMATH = {"contract"}
# IEEE division (x/0 = inf, as numpy) instead of Python's ZeroDivisionError check, whose
# branch would keep every loop with a division from being vectorised.
jit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
# The same, for functions with a parallel loop (numba.prange) over numba's threads.
pjit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", parallel=True)


def exact(arrays: int):
    """A void function compiled eagerly, for `arrays` contiguous 1-D arrays of float32 or of
    float64, without jit's fused multiply-adds (the optimisers' steps, kernels.py): each entry's
    step is the reference's IEEE arithmetic rounded op by op, the same bits in a loop's vector
    body and in its remainder, so wherever the arrays are split among threads. Compiled on
    demand, numba would give it the flags of its first caller (jit's "contract", or a prange's
    parallel pipeline), and with them the order of the tests deciding a fused a*b + c*d's
    rounding. Contiguous ("C"): for arrays of any layout ("A") the loops were not vectorised,
    and an lstm m 128 batch 1 update took 0.75-0.81 ms, not 0.51-0.56."""
    sigs = [
        numba.void(*[numba.types.Array(f, 1, "C")] * arrays) for f in (numba.float32, numba.float64)
    ]
    return numba.njit(sigs, cache=True, nogil=True, error_model="numpy")


# Compiled eagerly for its signature: compiled on demand from a fastmath caller, numba would
# give it the caller's "contract" flag, and the multiply-add would be fused on FMA machines.
@numba.njit("float64(float64, float64)", cache=True, error_model="numpy")
def _smooth(smooth: float, loss: float) -> float:
    """The smooth loss of SPEC.md, as the exact float64 expression (no fused multiply-add)."""
    return 0.999 * smooth + 0.001 * loss


TANH_CUT = 20.0  # tanh(20) rounds to 1.0 in float64; larger |a| is clamped here
TANH_HALVINGS = 8  # tanh via expm1(-2|a| / 2^8) and 8 doublings E <- E (E + 2)
EXP_MIN = -708.0  # exp is evaluated on [EXP_MIN, 0]; below it returns ~1e-308, not 0
LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * LN2_HI is exact (fdlibm)
LN2_LO = 1.90821492927058770002e-10
INV_FACTORIAL = np.array([1.0 / math.factorial(n) for n in range(14)])  # 1/n!, exact n!


@numba.extending.intrinsic
def _float_of_bits(typingctx, bits):
    """The float whose bits are `bits`: a float32 for an int32, a float64 for an int64 (a
    register's reinterpretation, which LLVM vectorises; a table of powers of two read at an
    index ran as a gather, 2.6x slower for the float32 sigmoid)."""
    floats = {numba.types.int32: numba.types.float32, numba.types.int64: numba.types.float64}
    if bits not in floats:
        return None
    kind = llvmlite_ir.FloatType() if bits == numba.types.int32 else llvmlite_ir.DoubleType()
    return floats[bits](bits), lambda context, builder, sig, args: builder.bitcast(args[0], kind)


@numba.extending.intrinsic
def _bits_of_float(typingctx, x):
    """The bits of the float x: an int32 for a float32, an int64 for a float64."""
    ints = {numba.types.float32: numba.types.int32, numba.types.float64: numba.types.int64}
    if x not in ints:
        return None
    kind = llvmlite_ir.IntType(ints[x].bitwidth)
    return ints[x](x), lambda context, builder, sig, args: builder.bitcast(args[0], kind)


# 2^k by adding 1.5 * 2^52 (2^23): the sum's low bits are the integer k, in two's complement,
# read by reinterpreting the float. No float-to-integer conversion: AVX2 has none that is
# vectorised for float64 (LLVM scalarises it, and converting k back by the same), and LLVM makes
# a NaN converted so a poison value, where these bits are merely garbage.
ROUND64, ROUND32 = 6755399441055744.0, np.float32(12582912.0)


@jit
def _pow2(k):
    """2^k for an integer-valued float64 k in -1022 .. 1023 (a normal float64: exact); any
    float64 for another k (NaN included)."""
    return _float_of_bits((_bits_of_float(k + ROUND64) - _bits_of_float(ROUND64) + 1023) << 52)


@jit
def _pow2_32(k):
    """2^k for an integer-valued float32 k in -126 .. 127 (a normal float32: exact); any
    float32 for another k (NaN included)."""
    bits = _bits_of_float(k + ROUND32) - _bits_of_float(ROUND32) + np.int32(127)
    return _float_of_bits(np.int32(bits << np.int32(23)))  # numba widens int32 sums


@jit
def _taylor(x, top, low, inv_factorial=INV_FACTORIAL):
    """sum over n = low .. top of x^(n - low) / n!, by Horner's rule from n = top down, in the
    dtype of inv_factorial (1/n!)."""
    s = inv_factorial[top]
    for n in range(top - 1, low - 1, -1):
        s = s * x + inv_factorial[n]
    return s


@jit
def _tanh(a, out):
    """out = tanh(a) elementwise, in float64, to a few ulp; vectorisable (no libm call).

    tanh(y) = -E / (2 + E) with E = expm1(-2y), for y = |a|; E comes from a Taylor series
    at -2y / 2^8 and 8 doublings expm1(2x) = E (E + 2), which keep the relative accuracy.
    """
    for i in range(a.size):
        v = np.float64(a[i])
        y = abs(v)
        if y > TANH_CUT:
            y = TANH_CUT
        x = y * (-2.0 / 2.0**TANH_HALVINGS)
        e = _taylor(x, 11, 1) * x  # expm1(x) = x (1/1! + x/2! + ... + x^10/11!)
        for _ in range(TANH_HALVINGS):
            e = e * (e + 2.0)
        t = -e / (2.0 + e)
        out[i] = t if v >= 0.0 else -t  # NaN stays NaN (y, e and t are NaN)


@jit
def _exp_nonpositive(z, out):
    """out = exp(z) for z <= 0 (NaN stays NaN), float64, ~1 ulp; vectorisable.

    exp(z) = 2^k exp(r) with k = round(z / ln 2), |r| <= ln(2) / 2, exp(r) by Taylor.
    """
    for i in range(z.size):
        v = z[i]
        w = EXP_MIN if v < EXP_MIN else v  # NaN stays NaN: so are k, r and the product
        k = np.floor(w * LOG2E + 0.5)  # a float: math.floor's integer would be converted twice
        r = (w - k * LN2_HI) - k * LN2_LO
        out[i] = _taylor(r, 13, 0) * _pow2(k)  # exp(r) = 1/0! + r/1! + ... + r^13/13!


@jit
def _sigmoid(a, out):
    """out = 1 / (1 + exp(-a)) elementwise, in float64 (any input dtype), ~1 ulp; vectorisable.

    With e = exp(-|a|) <= 1: 1 / (1 + e) for a >= 0 and e / (1 + e) below, so that neither
    overflows; NaN stays NaN.
    """
    for i in range(a.size):
        v = np.float64(a[i])
        w = -abs(v)
        w = EXP_MIN if w < EXP_MIN else w
        k = np.floor(w * LOG2E + 0.5)
        r = (w - k * LN2_HI) - k * LN2_LO
        e = _taylor(r, 13, 0) * _pow2(k)
        s = 1.0 / (1.0 + e)
        out[i] = s if v >= 0.0 else e * s


# ---- float32 versions for float32 arrays: the same methods, float32 arithmetic, fewer terms ----
# (16 lanes instead of 8, and the conversions gone). Every constant is a float32 (numba would
# promote a float32 operand of a float64 constant to float64).
F32 = np.float32
TANH_CUT32 = F32(9.0)  # tanh(9) = 1 - 3.0e-8 rounds to 1.0 in float32
TANH_HALVINGS32 = 6  # |x| <= 18 / 2^6: the Taylor series to x^7 / 7! leaves < 4e-9
EXP_MIN32 = F32(-87.0)  # exp(-87) = 1.6e-38, still a normal float32
LOG2E32, HALF32, ONE32, TWO32 = F32(LOG2E), F32(0.5), F32(1.0), F32(2.0)
LN2_HI32 = F32(0.693359375)  # 355 / 512: k * LN2_HI32 is exact for |k| <= 127
LN2_LO32 = F32(math.log(2.0) - 0.693359375)
INV_FACTORIAL32 = INV_FACTORIAL.astype(np.float32)


@jit
def _tanh32(a, out):
    """_tanh for float32 a and out, in float32 arithmetic, to a few float32 ulp."""
    for i in range(a.size):
        v = a[i]
        y = abs(v)
        if y > TANH_CUT32:
            y = TANH_CUT32
        x = y * F32(-2.0 / 2.0**TANH_HALVINGS32)
        e = _taylor(x, 7, 1, INV_FACTORIAL32) * x
        for _ in range(TANH_HALVINGS32):
            e = e * (e + TWO32)
        t = -e / (TWO32 + e)
        out[i] = t if v >= 0.0 else -t


@jit
def _sigmoid32(a, out):
    """_sigmoid for float32 a and out, in float32 arithmetic, to a few float32 ulp."""
    for i in range(a.size):
        v = a[i]
        w = -abs(v)
        w = EXP_MIN32 if w < EXP_MIN32 else w
        k = np.floor(w * LOG2E32 + HALF32)
        r = (w - k * LN2_HI32) - k * LN2_LO32
        e = _taylor(r, 7, 0, INV_FACTORIAL32) * _pow2_32(k)
        s = ONE32 / (ONE32 + e)
        out[i] = s if v >= 0.0 else e * s


def tanh(a, out):
    """out = tanh(a) (compiled code only): _tanh32 when both are float32, else _tanh."""
    raise NotImplementedError


def sigmoid(a, out):
    """out = sigmoid(a) (compiled code only): _sigmoid32 when both are float32, else _sigmoid."""
    raise NotImplementedError


def _float32s(a, out) -> bool:
    return a.dtype == numba.types.float32 and out.dtype == numba.types.float32


@numba.extending.overload(tanh)
def _tanh_by_dtype(a, out):
    if _float32s(a, out):
        return lambda a, out: _tanh32(a, out)
    return lambda a, out: _tanh(a, out)


@numba.extending.overload(sigmoid)
def _sigmoid_by_dtype(a, out):
    if _float32s(a, out):
        return lambda a, out: _sigmoid32(a, out)
    return lambda a, out: _sigmoid(a, out)


@jit
def _all_finite(a) -> bool:
    """No NaN or infinity in the 1-d array a (a branch-free count, so it vectorises)."""
    bad = 0
    for i in range(a.size):
        bad += not (abs(a[i]) < np.inf)
    return bad == 0


@jit
def _nll(o, c, y, z64):
    """(-log p_y, sum of exp(o - max o)) for the logits o + c; o gets + c in place, z64[:K]
    the exponentials, in float64, and z64[K:2K] is scratch. NaN or inf anywhere makes the
    loss NaN, as in the reference.

    The elementwise functions here are always given an output apart from their input: when
    both are one array, LLVM's run-time overlap check fails and the scalar loop runs (3x
    slower for this exp).
    """
    K = c.size
    top = -np.inf
    for k in range(K):
        o[k] = o[k] + c[k]
        if o[k] > top:
            top = o[k]
    z = z64[K : 2 * K]
    for k in range(K):
        z[k] = o[k] - top
    zy = z[y]
    _exp_nonpositive(z, z64[:K])
    s = 0.0
    for k in range(K):
        s += z64[k]
    return math.log(s) - zy, s
