"""c = a @ B and C = A @ B for row-major B and C, written as explicit vector code.

The recurrences step one character at a time, so their matrix-vector products (W h, W^T da,
the gates of a layer, the logits when sampling) cannot be batched, and the exercise's
products over a chunk (25 x 100 by 100 x 65 and the like) are too small for BLAS, whose call,
checks and packing cost more than the arithmetic. numba's loops keep c in memory (a load and a
store of c per pass over a few rows of B) and leave the columns past the last full vector to
scalar code. The loops here, emitted as LLVM IR (numba.extending.intrinsic), hold a block of C
in vector registers for the whole pass over the rows of B: per row p of B, one broadcast of
A[r, p] per row r of the block and one multiply-add per vector of the block, nothing else.
Measured (one 100 x 100 W, the exercise, float64 / float32): 735 / 300 ns for numba's loop,
430 / 175 ns here; the exercise's four products over a chunk 2-3x faster than OpenBLAS.

Order of the sums (what the engines' tests rely on):
- matvec: SETS interleaved partial sums over the rows of B (p = s, s + SETS, ...), added,
  then the leftover rows. It depends on the row count alone, never on the column count or
  position, so a column of c is the same bits however the columns of B are split into panels,
  vectors or chunks of units (fast._layer_step relies on this).
- gemm: each entry summed over p in order, one multiply-add at a time. gemm_tall and
  gemm_packed sum so too, from B packed in panels (pack: a block's columns, each panel's rows
  contiguous), so the same bits as gemm.
Columns past the last full vector are computed by a last vector that overlaps the one before
it (the same bits twice), so any width works without masks or padding; matvec's widths under
one vector use shorter vectors, gemm's are left to BLAS.
"""

from __future__ import annotations

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from charwise.engines.numerics import jit, numba, pjit


def _vector_bytes(features: str) -> int:
    """The widest vector register of the machine numba compiles for, in bytes."""
    if "+avx512f" in features:
        return 64
    if "+avx" in features:
        return 32
    return 16  # SSE2 (every x86-64), NEON (aarch64)


def _many_registers(features: str) -> bool:
    """32 vector registers (AVX-512, aarch64) rather than x86's 16."""
    return "+avx512f" in features or "+neon" in features


_FEATURES = llvmlite.binding.get_host_cpu_features().flatten()
VECTOR_BYTES = _vector_bytes(_FEATURES)
SETS = 2  # matvec's partial sums per entry: two multiply-add chains in flight per vector
PANEL = 14 if _many_registers(_FEATURES) else 6  # matvec's vectors per pass (SETS x these)
GEMM_ROWS = 4  # gemm's block: rows of A x vectors of columns of B, held in registers
GEMM_VECTORS = 6 if _many_registers(_FEATURES) else 3
KC = 256  # gemm_tall: rows of B per pass (a panel of B, KC x GEMM_VECTORS, stays in cache)
MC = 64  # gemm_tall: rows of A per block of a pass (their KC entries stay in cache)
# gemm_tall copies a block of a strided A where this many panels read it, at least: dW of 512
# units (22 panels on AVX2) ran 1.2x faster so, of 256 and 128 units (11, 6) 1.1-1.2x slower.
COPY_PANELS = 16
DOT_ROWS, DOT_COLS = (4, 4) if _many_registers(_FEATURES) else (2, 4)  # gemm_nt's block
I64 = ir.IntType(64)


def _check(C, A, B, what):
    arrays = (C, A, B)
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in arrays):
        raise TypingError(f"{what} takes 2-d arrays")
    floats = (types.float32, types.float64)
    if not all(x.dtype in floats and x.dtype.bitwidth <= C.dtype.bitwidth for x in arrays):
        raise TypingError(f"{what} takes float32 or float64 arrays, A and B no wider than C")


def _codegen(variants, sets, accumulate=False):
    """The code of C[rows, cols] = A[rows] @ B[:, cols] for `rows` rows from r0 and `count`
    vectors of `width` entries from column n0 (the last one moved back to end at column N if it
    would pass it): one loop per (rows, width, count) of variants, chosen at run time. Sums in
    C's dtype (float32 entries of A and B are widened for a float64 C). accumulate: a last
    argument `add`; where it is not 0, the sums start from C's entries (C += A @ B), the same
    loops (a second set of loops for it took 20 s more to compile an lstm's block)."""

    def codegen(context, builder, signature, args):
        arrays = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(signature.args[:3], args[:3], strict=True)
        ]
        dtypes = [t.dtype for t in signature.args[:3]]

        def stride(i, axis):  # in entries
            step = builder.extract_value(arrays[i].strides, axis)
            return builder.sdiv(step, I64(dtypes[i].bitwidth // 8))

        C, A, B = arrays
        r0, rows, n0, count, width = args[3:8]
        where = {
            "P": builder.extract_value(B.shape, 0), "N": builder.extract_value(B.shape, 1),
            "r0": r0, "n0": n0, "C": (C.data, stride(0, 0)),
            "A": (A.data, stride(1, 0), stride(1, 1)), "B": (B.data, stride(2, 0)),
            "types": [context.get_data_type(t) for t in dtypes],
            "add": builder.icmp_signed("!=", args[8], I64(0)) if accumulate else None,
        }  # fmt: skip
        end = builder.function.append_basic_block("end")
        key = builder.add(
            builder.mul(builder.add(builder.mul(rows, I64(256)), width), I64(64)), count
        )
        switch = builder.switch(key, end)
        for rows_, width_, count_ in variants(VECTOR_BYTES * 8 // dtypes[0].bitwidth):
            block = builder.function.append_basic_block(f"v{rows_}x{width_}x{count_}")
            switch.add_case(I64((rows_ * 256 + width_) * 64 + count_), block)
            builder.position_at_end(block)
            _emit(builder, rows_, width_, count_, sets, where)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return codegen


def _matvec_variants(lanes):
    yield from ((1, lanes, k) for k in range(1, PANEL + 1))
    width = lanes // 2
    while width >= 1:  # fewer columns than one vector: at most two of the widest that fit
        yield from ((1, width, k) for k in (1, 2))
        width //= 2


def _gemm_variants(lanes):  # rows past the last full block one at a time: fewer loops to compile
    yield from ((r, lanes, k) for r in (1, GEMM_ROWS) for k in range(1, GEMM_VECTORS + 1))


@intrinsic
def _panel(typingctx, C, A, B, r0, rows, n0, count, width):
    """One panel of matvec: rows = 1, SETS partial sums per entry."""
    _check(C, A, B, "_panel")
    return types.void(C, A, B, r0, rows, n0, count, width), _codegen(_matvec_variants, SETS)


@intrinsic
def _block(typingctx, C, A, B, r0, rows, n0, count, width, add):
    """One block of gemm: rows <= GEMM_ROWS, count <= GEMM_VECTORS, one sum per entry; adding
    to C's entries where add is not 0 (the sums going on from C's values, in order)."""
    _check(C, A, B, "_block")
    signature = types.void(C, A, B, r0, rows, n0, count, width, add)
    return signature, _codegen(_gemm_variants, 1, True)


def _emit(builder, R, width, count, sets, where):
    """The IR of one variant: rows p < P - sets + 1 of B in steps of `sets`, with `sets` sets of
    R x count vector sums (set s takes row p + s; the first starting from C's entries where
    where["add"] is true), the sets added, then the leftover rows."""
    c_type, a_type, b_type = where["types"]
    vector, b_vector = ir.VectorType(c_type, width), ir.VectorType(b_type, width)
    fma = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vector, [vector] * 3),
        f"llvm.fmuladd.v{width}f{_bits(c_type)}",
    )
    offsets = [builder.add(where["n0"], I64(v * width)) for v in range(count)]
    last = builder.sub(where["N"], I64(width))  # the last vector ends at column N at the latest
    offsets[-1] = builder.select(builder.icmp_signed("<", offsets[-1], last), offsets[-1], last)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    a, a_row, a_col = where["A"]
    b, b_row = where["B"]
    a_rows = [
        builder.gep(a, [builder.mul(builder.add(where["r0"], I64(r)), a_row)]) for r in range(R)
    ]

    def load_b(row):
        start = builder.gep(b, [builder.mul(row, b_row)])
        values = []
        for offset in offsets:
            pointer = builder.bitcast(builder.gep(start, [offset]), b_vector.as_pointer())
            value = builder.load(pointer, align=_bits(b_type) // 8)
            values.append(value if b_type == c_type else builder.fpext(value, vector))
        return values

    def broadcast(r, row):
        scalar = builder.load(builder.gep(a_rows[r], [builder.mul(row, a_col)]))
        if a_type != c_type:
            scalar = builder.fpext(scalar, c_type)
        one = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.IntType(32)(0))
        return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), splat)

    def loop(start, stop, step, sums, tag):
        """for p in range(start, stop, step): sums[s][r][v] += A[r0 + r, p + s] B[p + s, cols v]."""
        entry = builder.block
        head, body, done = (builder.function.append_basic_block(f"{tag}.{x}") for x in "hbd")
        builder.branch(head)
        builder.position_at_end(head)
        p = builder.phi(I64)
        p.add_incoming(start, entry)
        phis = [[[builder.phi(vector) for _ in range(count)] for _ in range(R)] for _ in sums]
        for phi, value in zip(_flat(phis), _flat(sums), strict=True):
            phi.add_incoming(value, entry)
        builder.cbranch(builder.icmp_signed("<", p, stop), body, done)
        builder.position_at_end(body)
        new = []
        for s, set_ in enumerate(phis):
            row = builder.add(p, I64(s))
            values = load_b(row)
            new.append([])
            for r, accumulators in enumerate(set_):
                a_r = broadcast(r, row)
                new[-1].append(
                    [
                        builder.call(fma, [x, a_r, y])
                        for x, y in zip(values, accumulators, strict=True)
                    ]
                )
        p.add_incoming(builder.add(p, I64(step)), builder.block)
        for phi, value in zip(_flat(phis), _flat(new), strict=True):
            phi.add_incoming(value, builder.block)
        builder.branch(head).set_metadata("llvm.loop", _no_unrolling(builder.module, tag))
        builder.position_at_end(done)
        return p, phis

    tag = f"{R}x{width}x{count}"
    zero = ir.Constant(vector, [0.0] * width)
    zeros = [[[zero] * count for _ in range(R)] for _ in range(sets)]
    c, c_row = where["C"]
    c_rows = [
        builder.gep(c, [builder.mul(builder.add(where["r0"], I64(r)), c_row)]) for r in range(R)
    ]
    if where["add"] is not None:
        zeros[0] = [
            [
                builder.select(
                    where["add"],
                    builder.load(_vector_at(builder, start, o, vector), align=_bits(c_type) // 8),
                    zero,
                )
                for o in offsets
            ]
            for start in c_rows
        ]
    p, sums = loop(I64(0), builder.sub(where["P"], I64(sets - 1)), sets, zeros, tag + "m")
    total = sums[0]
    for other in sums[1:]:
        total = [
            [builder.fadd(x, y) for x, y in zip(xs, ys, strict=True)]
            for xs, ys in zip(total, other, strict=True)
        ]
    if sets > 1:
        _, (total,) = loop(p, where["P"], 1, [total], tag + "r")
    for start, values in zip(c_rows, total, strict=True):
        for value, offset in zip(values, offsets, strict=True):
            builder.store(
                value, _vector_at(builder, start, offset, vector), align=_bits(c_type) // 8
            )


def _no_unrolling(module, tag):
    """A loop's metadata (its own first operand, as LLVM's loop ids are) that keeps LLVM from
    unrolling it. These loops hold all the vector registers already; unrolled (as LLVM did to
    gemm_packed's when it optimised a caller's module with them linked in, and numba's cache
    then served that copy), the loads of the next rows spilled the sums to the stack and the
    lstm m 256, batch 32 update took 58 ms instead of 41 on an AVX2 Zen 3."""
    option = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = module.add_metadata([ir.MetaDataString(module, f"charwise.{tag}"), option])
    loop_id.operands = (loop_id, option)
    return loop_id


def _vector_at(builder, start, offset, vector):
    """A pointer to the vector at entry `offset` of a row."""
    return builder.bitcast(builder.gep(start, [offset]), vector.as_pointer())


@intrinsic
def _dots(typingctx, C, A, B, r0, rows, j0, cols):
    """C[r0 + r, j0 + j] = A[r0 + r] . B[j0 + j] for r < rows <= DOT_ROWS, j < cols <= DOT_COLS:
    rows of A and B (P >= one vector of entries) contiguous, one dtype."""
    _check(C, A, B, "_dots")
    if len({C.dtype, A.dtype, B.dtype}) != 1:
        raise TypingError("_dots takes arrays of one dtype")

    def codegen(context, builder, signature, args):
        arrays = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(signature.args[:3], args[:3], strict=True)
        ]
        element = context.get_data_type(C.dtype)
        itemsize = C.dtype.bitwidth // 8

        def row_step(x):
            return builder.sdiv(builder.extract_value(x.strides, 0), I64(itemsize))

        C_, A_, B_ = arrays
        r0_, rows_, j0_, cols_ = args[3:]
        where = {
            "P": builder.extract_value(A_.shape, 1), "r0": r0_, "j0": j0_,
            "C": (C_.data, row_step(C_)), "A": (A_.data, row_step(A_)),
            "B": (B_.data, row_step(B_)),
        }  # fmt: skip
        end = builder.function.append_basic_block("end")
        switch = builder.switch(builder.add(builder.mul(rows_, I64(64)), cols_), end)
        for R in (1, DOT_ROWS):  # the rest one row or column at a time: fewer loops to compile
            for J in (1, DOT_COLS):
                block = builder.function.append_basic_block(f"d{R}x{J}")
                switch.add_case(I64(R * 64 + J), block)
                builder.position_at_end(block)
                _emit_dots(builder, element, VECTOR_BYTES // itemsize, R, J, where)
                builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return types.void(C, A, B, r0, rows, j0, cols), codegen


def _emit_dots(builder, element, width, R, J, where):
    """The IR of one R x J block of _dots: per lane, a sum over p of that lane, one vector of
    p at a time; the last P mod width entries from a vector ending at P with the lanes already
    summed set to zero; then the lanes added in a tree (halves, quarters, ...)."""
    vector = ir.VectorType(element, width)
    i32 = ir.IntType(32)
    fma = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vector, [vector] * 3),
        f"llvm.fmuladd.v{width}f{_bits(element)}",
    )
    P = where["P"]
    a, a_row = where["A"]
    b, b_row = where["B"]
    a_rows = [
        builder.gep(a, [builder.mul(builder.add(where["r0"], I64(r)), a_row)]) for r in range(R)
    ]
    b_rows = [
        builder.gep(b, [builder.mul(builder.add(where["j0"], I64(j)), b_row)]) for j in range(J)
    ]
    align = _bits(element) // 8

    def load(start, p):
        pointer = builder.bitcast(builder.gep(start, [p]), vector.as_pointer())
        return builder.load(pointer, align=align)

    def step(p, sums, keep=None):
        xs = [load(start, p) for start in a_rows]
        ys = [load(start, p) for start in b_rows]
        if keep is not None:
            zero = ir.Constant(vector, [0.0] * width)
            xs = [builder.select(keep, x, zero) for x in xs]
            ys = [builder.select(keep, y, zero) for y in ys]
        return [
            [builder.call(fma, [x, y, sums[r][j]]) for j, y in enumerate(ys)]
            for r, x in enumerate(xs)
        ]

    entry = builder.block
    head, body, tail, done = (builder.function.append_basic_block(f"d{R}x{J}.{x}") for x in "hbtd")
    builder.branch(head)
    builder.position_at_end(head)
    p = builder.phi(I64)
    p.add_incoming(I64(0), entry)
    phis = [[builder.phi(vector) for _ in range(J)] for _ in range(R)]
    for phi in (x for row in phis for x in row):
        phi.add_incoming(ir.Constant(vector, [0.0] * width), entry)
    more = builder.icmp_signed("<=", builder.add(p, I64(width)), P)
    builder.cbranch(more, body, tail)
    builder.position_at_end(body)
    new = step(p, phis)
    p.add_incoming(builder.add(p, I64(width)), builder.block)
    for phi_row, new_row in zip(phis, new, strict=True):
        for phi, value in zip(phi_row, new_row, strict=True):
            phi.add_incoming(value, builder.block)
    builder.branch(head)
    builder.position_at_end(tail)  # P - p < width entries left: the lanes past width - (P - p)
    left = builder.sub(P, p)
    lanes = ir.Constant(ir.VectorType(I64, width), list(range(width)))
    first = builder.sub(I64(width), left)
    first_v = builder.insert_element(
        ir.Constant(ir.VectorType(I64, width), ir.Undefined), first, i32(0)
    )
    first_v = builder.shuffle_vector(
        first_v,
        ir.Constant(ir.VectorType(I64, width), ir.Undefined),
        ir.Constant(ir.VectorType(i32, width), [0] * width),
    )
    keep = builder.icmp_signed(">=", lanes, first_v)
    any_left = builder.icmp_signed(">", left, I64(0))
    with_tail = builder.function.append_basic_block(f"d{R}x{J}.t2")
    builder.cbranch(any_left, with_tail, done)
    builder.position_at_end(with_tail)
    tailed = step(builder.sub(P, I64(width)), phis, keep)
    builder.branch(done)
    builder.position_at_end(done)
    totals = [[builder.phi(vector) for _ in range(J)] for _ in range(R)]
    for total, before, after in zip(_flat([totals]), _flat([phis]), _flat([tailed]), strict=True):
        total.add_incoming(before, tail)
        total.add_incoming(after, with_tail)
    c, c_row = where["C"]
    for r in range(R):
        start = builder.gep(c, [builder.mul(builder.add(where["r0"], I64(r)), c_row)])
        for j in range(J):
            value = _lane_sum(builder, totals[r][j], width)
            builder.store(value, builder.gep(start, [builder.add(where["j0"], I64(j))]))


def _lane_sum(builder, v, width):
    """The sum of a vector's lanes: halves added, then quarters, ... (a fixed order)."""
    i32 = ir.IntType(32)
    while width > 1:
        half = width // 2
        low = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half), list(range(half))))
        high = builder.shuffle_vector(
            v, v, ir.Constant(ir.VectorType(i32, half), list(range(half, width)))
        )
        v = builder.fadd(low, high)
        width = half
    return builder.extract_element(v, ir.IntType(32)(0))


def _bits(t) -> int:
    return 64 if isinstance(t, ir.DoubleType) else 32


def _flat(nested):
    return [x for level in nested for row in level for x in row]


@intrinsic
def _tile(typingctx, A, out, r, n):
    """out[n:n+4, r:r+4] = A[r:r+4, n:n+4].T: four vector loads, two rounds of shuffles, four
    vector stores (the rows of A and out contiguous, the same dtype)."""

    def codegen(context, builder, signature, args):
        types_ = signature.args
        arrays = [context.make_array(types_[i])(context, builder, args[i]) for i in (0, 1)]
        r, n = (context.cast(builder, args[i], types_[i], types.intp) for i in (2, 3))
        vector = ir.VectorType(context.get_data_type(types_[0].dtype), 4)
        size = types_[0].dtype.bitwidth // 8

        def at(array, row, col):
            step = builder.sdiv(builder.extract_value(array.strides, 0), I64(size))
            return _vector_at(builder, array.data, builder.add(builder.mul(row, step), col), vector)

        def shuffle(x, y, lanes):
            return builder.shuffle_vector(
                x, y, ir.Constant(ir.VectorType(ir.IntType(32), 4), lanes)
            )

        a, b, c, d = (
            builder.load(at(arrays[0], builder.add(r, I64(k)), n), align=size) for k in range(4)
        )
        ab_even, ab_odd = shuffle(a, b, [0, 4, 2, 6]), shuffle(a, b, [1, 5, 3, 7])
        cd_even, cd_odd = shuffle(c, d, [0, 4, 2, 6]), shuffle(c, d, [1, 5, 3, 7])
        columns = (
            shuffle(ab_even, cd_even, [0, 1, 4, 5]),
            shuffle(ab_odd, cd_odd, [0, 1, 4, 5]),
            shuffle(ab_even, cd_even, [2, 3, 6, 7]),
            shuffle(ab_odd, cd_odd, [2, 3, 6, 7]),
        )
        for k, column in enumerate(columns):
            builder.store(column, at(arrays[1], builder.add(n, I64(k)), r), align=size)
        return context.get_dummy_value()

    if (
        not all(isinstance(x, types.Array) and x.ndim == 2 for x in (A, out))
        or A.dtype != out.dtype
    ):
        raise TypingError("_tile takes two 2-d arrays of one dtype")
    return types.void(A, out, r, n), codegen


@jit
def transpose(A, out):
    """out = A.T for A (R, N) and out (N, R) with contiguous rows, in 4 x 4 tiles (LLVM left
    the scalar loop's strided reads scalar: 2-3x slower at 100 x 100); a copy, so exact."""
    R, N = A.shape
    if out.shape[0] != N or out.shape[1] != R:
        raise ValueError("transpose: out must have A's shape reversed")
    if not (_rows_contiguous(A) and _rows_contiguous(out)):
        raise ValueError("transpose: the rows of A and out must be contiguous")
    R4, N4 = R - R % 4, N - N % 4
    for r in range(0, R4, 4):
        for n in range(0, N4, 4):
            _tile(A, out, r, n)
    for r in range(R4, R):
        for n in range(N):
            out[n, r] = A[r, n]
    for n in range(N4, N):
        for r in range(R4):
            out[n, r] = A[r, n]


@jit
def _rows_contiguous(X) -> bool:
    """Entries of a row next to each other (numpy gives any strides to empty axes and axes of
    length 1)."""
    return X.shape[0] == 0 or X.shape[1] <= 1 or X.strides[1] == X.itemsize


@jit
def matvec(c, a, B):
    """c = a @ B for C-contiguous vectors a (P), c (N) and a matrix B (P, N) with contiguous
    rows; float32 a and B may make a float64 c. c must not overlap a or B."""
    if not _rows_contiguous(B):
        raise ValueError("matvec: the rows of B must be contiguous")
    _one_row(c.reshape(1, c.size), a.reshape(1, a.size), B)


@jit
def _one_row(C, A, B):
    """C[0] = A[0] @ B by matvec's panels (any strides for A)."""
    N = B.shape[1]
    if N == 0:
        return
    lanes = VECTOR_BYTES // C.itemsize
    width = lanes
    while width > N:
        width //= 2
    left = (N + width - 1) // width
    most = PANEL if width == lanes else 2
    n0 = 0
    while left > 0:
        count = min(left, most)
        _panel(C, A, B, 0, 1, n0, count, width)
        n0 += count * width
        left -= count


@jit
def gemm(A, B, C):
    """C = A @ B for any A (M, P), and B (P, N) and C (M, N) of one dtype with contiguous rows;
    C must not overlap A or B. Each entry summed over p in order, in blocks of rows x columns
    that go down the rows of C for each panel of columns (so that the panel of B, P x
    GEMM_VECTORS vectors, stays in cache for all of them), or by scalar loops in the same order
    for fewer columns than a vector; a single row in matvec's order. For one M, an entry is the
    same bits however the columns are split."""
    M, N = C.shape
    if not (_rows_contiguous(B) and _rows_contiguous(C)):
        _loops(A, B, C)
        return
    lanes = VECTOR_BYTES // C.itemsize
    if M == 1:  # one row: matvec's two sums per entry do not wait on each other
        _one_row(C, A, B)
        return
    if N < lanes:
        _in_order(A, B, C)
        return
    n0, left = 0, (N + lanes - 1) // lanes
    while left > 0:
        count = min(left, GEMM_VECTORS)
        r0 = 0
        while r0 < M:
            rows = GEMM_ROWS if M - r0 >= GEMM_ROWS else 1
            _block(C, A, B, r0, rows, n0, count, lanes, 0)
            r0 += rows
        n0 += count * lanes
        left -= count


@jit
def gemm_nt(A, B, C):
    """C = A @ B.T for A (M, P), B (N, P) and C (M, N) of one dtype with contiguous rows; C must
    not overlap A or B. Each entry a dot product of two rows: per vector lane, a sum over p in
    order, then the lanes added in a tree; by plain loops where P is under a vector."""
    M, N = C.shape
    P = A.shape[1]
    contiguous = _rows_contiguous(A) and _rows_contiguous(B) and _rows_contiguous(C)
    if P < VECTOR_BYTES // C.itemsize or not contiguous:
        _loops(A, B.T, C)
        return
    j0 = 0
    while j0 < N:
        cols = DOT_COLS if N - j0 >= DOT_COLS else 1
        r0 = 0
        while r0 < M:
            rows = DOT_ROWS if M - r0 >= DOT_ROWS else 1
            _dots(C, A, B, r0, rows, j0, cols)
            r0 += rows
        j0 += cols


@jit
def _in_order(A, B, C):
    """C = A @ B by scalar loops, each entry summed over p in order with multiply-adds in C's
    dtype: _block's arithmetic."""
    zero = np.zeros(1, C.dtype)[0]
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            s = zero
            for p in range(A.shape[1]):
                s = s + A[i, p] * B[p, j]
            C[i, j] = s


@jit
def _loops(A, B, C):
    """C = A @ B by plain loops, any strides (sums in float64): for what the vector code does
    not take, which the engines never give it but in tiny models."""
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            s = 0.0
            for p in range(A.shape[1]):
                s += A[i, p] * B[p, j]
            C[i, j] = s


@jit
def gemm_tall(A, B, C):
    """gemm(A, B, C) for thousands of rows of A or P (the products over a whole chunk): in passes
    over KC rows of B, C accumulating after the first (each entry still summed over p in order,
    from 0), each pass's rows of B packed in panels (pack) and read contiguous, in blocks of MC
    rows of A. Read in place, a panel's rows, a row of B apart, fell in few cache sets (AVX2 Zen
    3, 2 cores, side by side: U^T's product for a layer of 512 units 112-117 GFLOP/s packed, 59-70
    in place; dW 1.0-1.3x as fast packed for 512 units, 1.25-1.4x for 128). A strided A's blocks
    (dW's dZ^T) are copied with contiguous rows where COPY_PANELS panels or more read each.
    Scalar loops in that order (_in_order) where N is below a vector or the rows of B or C are
    not contiguous."""
    M, P = A.shape
    N = C.shape[1]
    lanes = VECTOR_BYTES // C.itemsize
    if N < lanes or not (_rows_contiguous(B) and _rows_contiguous(C)):
        _in_order(A, B, C)
        return
    panels = np.empty(min(P, KC) * N, C.dtype)
    copy = not _rows_contiguous(A) and N >= COPY_PANELS * GEMM_VECTORS * lanes
    block = np.empty((min(M, MC) if copy else 0, min(P, KC)), C.dtype)
    p0 = 0
    while p0 == 0 or p0 < P:
        p1 = min(P, p0 + KC)
        pack(B[p0:p1], panels, 0, N)
        for i0 in range(0, M, MC):  # MC rows of A at a time, for all the panels
            i1 = min(M, i0 + MC)
            Ab = A[i0:i1, p0:p1]
            if copy:
                Ab = _copy_block(Ab, block[: i1 - i0, : p1 - p0])
            _pass(Ab, panels, p1 - p0, 0, N, 0, p0, C[i0:i1])
        p0 = max(p1, 1)


@jit
def _copy_block(A, out):
    """out = A, a block of a strided A (contiguous columns), read down its columns; returns out."""
    for p in range(A.shape[1]):
        for i in range(A.shape[0]):
            out[i, p] = A[i, p]
    return out


@pjit
def gemm_tall_parts(A, B, C, parts):
    """gemm_tall with the rows of A and C in `parts` parts (multiples of GEMM_ROWS), one per
    thread of numba's: the same bits as gemm_tall (an entry's sum does not depend on the rows
    or columns around it). Rows, not columns: each thread reads half of A, which is the larger
    operand of every product over a chunk (dW's dZ^T, read with a stride, ran at 78-99 GFLOP/s
    split so, 57-71 split by columns: AVX2, Zen 3)."""
    M = C.shape[0]
    parts = max(1, min(parts, M // GEMM_ROWS))
    for q in numba.prange(parts):
        r0, r1 = split_at(q, parts, M, GEMM_ROWS), split_at(q + 1, parts, M, GEMM_ROWS)
        gemm_tall(A[r0:r1], B, C[r0:r1])


@jit
def split_at(q, parts, n, step):
    """Where part q of n things in `parts` parts starts (n for q = parts): near q n / parts, at a
    multiple of step."""
    return n if q == parts else q * n // parts // step * step


@jit
def _panel_width(left, lanes):
    """The columns of the next panel of pack/gemm_packed when `left` columns are left: a block's
    GEMM_VECTORS vectors, or what is left, the last panel a vector wide at least where the
    columns are (its overlapping last vector then stays within one _block call)."""
    wide = GEMM_VECTORS * lanes
    if wide < left < wide + lanes:
        return left - lanes
    return min(left, wide)


@jit
def pack(B, buf, a, b):
    """buf[P a : P b] = columns [a, b) of B (P, N; any strides) as gemm_packed reads them: from
    column a, panels of _panel_width columns, each P x w rows after rows."""
    P = B.shape[0]
    lanes = VECTOR_BYTES // buf.itemsize
    c, off = a, P * a
    while c < b:
        w = _panel_width(b - c, lanes)
        for p in range(P):
            row, src = buf[off + p * w : off + (p + 1) * w], B[p, c : c + w]
            for j in range(w):
                row[j] = src[j]
        off += P * w
        c += w


@jit
def gemm_packed(A, buf, a, b, C):
    """C[:, a:b] = A @ B[:, a:b] from pack(B, buf, a, b): gemm_tall's sums (each entry over p in
    order, in passes of KC rows of B), its panels read contiguous. A (M, P) any strides, C
    with contiguous rows, one dtype with buf; scalar loops (_in_order) for b - a under a
    vector."""
    M, P = A.shape
    if b - a < VECTOR_BYTES // buf.itemsize:
        _in_order(A, buf[P * a : P * b].reshape((P, b - a)), C[:, a:b])
        return
    p0 = 0
    while p0 == 0 or p0 < P:
        p1 = min(P, p0 + KC)
        _pass(A[:, p0:p1], buf, P, a, b, p0, p0, C)
        p0 = max(p1, 1)


@jit
def _pass(A, buf, P, a, b, r, add, C):
    """C[:, a:b] = A @ rows [r, r + k) of the panels of columns [a, b) of a P-row B in buf
    (pack), for A (M, k); the sums starting from C's entries where add is not 0. Each panel at
    least a vector wide (_panel_width), so that its last vector's overlap with the one before
    lies within one _block call, whose vectors all start from C's entries before it."""
    M, k = A.shape
    lanes = VECTOR_BYTES // buf.itemsize
    c, off = a, P * a
    while c < b:
        w = _panel_width(b - c, lanes)
        Bp = buf[off + r * w : off + (r + k) * w].reshape((k, w))
        Cp = C[:, c : c + w]
        count = (w + lanes - 1) // lanes
        r0 = 0
        while r0 < M:
            rows = GEMM_ROWS if M - r0 >= GEMM_ROWS else 1
            _block(Cp, A, Bp, r0, rows, 0, count, lanes, add)
            r0 += rows
        off += P * w
        c += w
