"""Compiled pieces that the exact selection (:mod:`poisonlens.defense.facility_location`) and
GreeDi (:mod:`poisonlens.defense.greedi`) share: distance rows, the heap step, the budget check.

One definition each, so that both methods compute a kernel entry with the same operations in
the same order. That is what lets GreeDi's assignment reproduce a greedy's cover bit for bit
and lets a merge score a row exactly as the exact greedy would.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Rows of the kernel computed per block: 128 rows of a 5,000-example class is 2.5 MB, which
# stays in cache between the distance pass and the exp pass.
BLOCK_ROWS = 128

# Reassociation lets LLVM vectorise sums whose order does not matter (the gains' fixed order
# is set at compile time and is the same for every row, which is all exactness needs).
# Distances are compiled without fast math, so s_ij and s_ji go through the same operations
# in the same order whatever the vectoriser does, and agree bit for bit.
jit_fast = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "nnan", "ninf"})
jit_exact = numba.njit(cache=True, nogil=True)


@jit_exact
def squared_distances(z, Zt, lo, hi, out):  # pragma: no cover - compiled
    """out[i - lo] = sum_f (Zt[f, i] - z[f])^2 for lo <= i < hi, summed over f in order.

    Parameters
    ----------
    z : float32 array of shape (n_features,), one example
    Zt : float32 array of shape (n_features, n_samples), the examples as columns
    lo, hi : the columns compared, lo <= hi
    out : float32 array of at least hi - lo entries, overwritten
    """
    a = out[: hi - lo]  # slices: indexing Zt[f, i] over a sub-range does not vectorise
    a[:] = 0.0
    for f in range(Zt.shape[0]):
        zf = z[f]
        col = Zt[f, lo:hi]
        for i in range(hi - lo):
            diff = col[i] - zf
            a[i] += diff * diff


@jit_exact
def dot_products(z, Zt, lo, hi, out):  # pragma: no cover - compiled
    """out[i - lo] = sum_f Zt[f, i] * z[f] for lo <= i < hi, summed over f in order.

    Parameters
    ----------
    z : float32 array of shape (n_features,)
    Zt : float32 array of shape (n_features, n_samples)
    lo, hi : the columns compared, lo <= hi
    out : float32 array of at least hi - lo entries, overwritten
    """
    a = out[: hi - lo]
    a[:] = 0.0
    for f in range(Zt.shape[0]):
        zf = z[f]
        col = Zt[f, lo:hi]
        for i in range(hi - lo):
            a[i] += col[i] * zf


@jit_exact
def fill_rows(Z, Zt, rows, euclidean, out):  # pragma: no cover - compiled
    """Kernel rows before the exp: -||z_i - z_j|| / d (euclidean) or z_i . z_j (cosine, unit rows).

    Parameters
    ----------
    Z : float32 array of shape (n_samples, n_features)
    Zt : float32 array of shape (n_features, n_columns), the columns compared against
    rows : int64 array of shape (n_rows,), rows of Z
    euclidean : True for the euclidean kernel, False for cosine
    out : float32 array of shape (n_rows, n_columns), overwritten
    """
    d, n = Zt.shape
    acc = np.empty(n, np.float32)
    scale = np.float32(-1.0 / d)
    for r in range(rows.shape[0]):
        if euclidean:
            squared_distances(Z[rows[r]], Zt, 0, n, acc)
            for j in range(n):
                out[r, j] = math.sqrt(acc[j]) * scale
        else:
            dot_products(Z[rows[r]], Zt, 0, n, acc)
            out[r] = acc


@jit_fast
def _better(key_a, idx_a, key_b, idx_b):  # pragma: no cover - compiled
    return key_a > key_b or (key_a == key_b and idx_a < idx_b)


@jit_fast
def sift_down(keys, idx, pos, size):  # pragma: no cover - compiled
    """Restore the max-heap (largest key first, ties to the lowest index) below ``pos``.

    Parameters
    ----------
    keys : float64 array, the heap's keys (gains)
    idx : int64 array, the example each key belongs to
    pos : the position whose entry may be out of place
    size : entries in the heap
    """
    key, ix = keys[pos], idx[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _better(keys[child + 1], idx[child + 1], keys[child], idx[child]):
            child += 1
        if not _better(keys[child], idx[child], key, ix):
            break
        keys[pos], idx[pos] = keys[child], idx[child]
        pos = child
    keys[pos], idx[pos] = key, ix


def check_budget(k: int, n: int) -> None:
    """Raise ``ValueError`` unless 0 <= k <= n (k medoids among n examples).

    Parameters
    ----------
    k : the budget
    n : the examples it is chosen from
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
