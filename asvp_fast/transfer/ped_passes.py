"""PED's streaming passes over the N feature rows (see :mod:`.ped`): NumPy on the CPU, or torch on a
CUDA device, chunk by chunk so that a memory map larger than RAM works.

Every pass returns small NumPy arrays (C x D at most); the dynamics on the class centres run in
:mod:`.ped`. Inputs: NumPy arrays and memmaps of any real dtype (bfloat16 included) or torch tensors
on any device; :meth:`RowPasses.moved` builds the output following the input.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor

__all__ = ["MAX_ABS_VALUE", "NumpyPasses", "RowPasses", "TorchPasses", "add_rows_sorted", "default_chunk_rows"]

# |feature| values above this (2^480, about 3.1e144) would overflow the float64 sums of squares.
MAX_ABS_VALUE = 2.0**480


def default_chunk_rows(n: int, d: int, target_bytes: int = 32 << 20) -> int:
    """Rows of ~``target_bytes`` of float64 (at least 1, at most ``n``)."""
    return max(1, min(n, target_bytes // max(1, 8 * d)))


def _spans(n: int, rows: int) -> Iterator[Tuple[int, int]]:
    for lo in range(0, n, rows):
        yield lo, min(n, lo + rows)


def add_rows_sorted(target: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> None:
    """``target[idx[k]] += vals[k]`` for ascending ``idx`` (segment sums, deterministic)."""
    if idx.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    target[idx[starts]] += np.add.reduceat(vals, starts, axis=0)


def _bad_row_error(ok_rows: Any, lo: int) -> ValueError:
    return ValueError(f"features row {lo + int(np.argmin(ok_rows))} contains NaN or Inf, or a value above "
                      f"{MAX_ABS_VALUE:.3g} in magnitude")


class RowPasses:
    """The three streaming passes over the N rows and the final move; results are NumPy (C x D)."""

    def __init__(self, X: Any, yi: np.ndarray, c: int, rows: int) -> None:
        self.X, self.yi, self.c, self.rows = X, yi, c, rows
        self.n, self.d = X.shape
        self.peak = 0.0  # largest |value| of the features, known after the first pass

    def needs_range_check(self, shift: np.ndarray, dtype: Any) -> bool:
        """Whether some moved value could exceed ``dtype``'s range (then every row is checked)."""
        return self.peak + float(np.abs(shift).max()) > float(np.finfo(dtype).max)

    def class_and_pool_sums(self) -> Tuple[np.ndarray, np.ndarray]:
        """Per-class row sums (C, D) and the pool's column sums (D,); checks every value."""
        raise NotImplementedError

    def pool_squares(self, mean: np.ndarray) -> np.ndarray:
        """Σ_rows (x - mean)² per column (D,)."""
        raise NotImplementedError

    def class_squares(self, class_means: np.ndarray, inv_var: np.ndarray) -> np.ndarray:
        """Σ_{rows of c} Σ_d (x - m_c)² / std_d² per class (C,)."""
        raise NotImplementedError

    def moved(self, shift: Optional[np.ndarray], dtype: Any) -> Any:
        """The rows moved by ``shift[class]`` (None: an exact copy), in ``dtype``, following the input."""
        raise NotImplementedError


def _numpy_rows(X: Any, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi as float64 NumPy (a view when they already are; never written to)."""
    if is_torch_tensor(X):
        return X[lo:hi].to(dtype=_torch_float64()).cpu().numpy()
    return np.asarray(X[lo:hi], dtype=np.float64)


def _torch_float64() -> Any:
    import torch

    return torch.float64


class NumpyPasses(RowPasses):
    """The passes with NumPy (float64) on the CPU, for arrays, memmaps and tensors alike (a tensor's
    rows are copied to the host chunk by chunk); deterministic segment sums."""

    def class_and_pool_sums(self) -> Tuple[np.ndarray, np.ndarray]:
        class_sum = np.zeros((self.c, self.d), dtype=np.float64)
        pool_sum = np.zeros(self.d, dtype=np.float64)
        for lo, hi in _spans(self.n, self.rows):
            blk = _numpy_rows(self.X, lo, hi)
            magnitude = np.abs(blk)
            ok = (magnitude <= MAX_ABS_VALUE).all(axis=1)  # False for NaN and Inf too
            if not ok.all():
                raise _bad_row_error(ok, lo)
            self.peak = max(self.peak, float(magnitude.max()))
            del magnitude
            order = np.argsort(self.yi[lo:hi], kind="stable")
            add_rows_sorted(class_sum, self.yi[lo:hi][order], blk[order])
            pool_sum += blk.sum(axis=0)
        return class_sum, pool_sum

    def pool_squares(self, mean: np.ndarray) -> np.ndarray:
        sq = np.zeros(self.d, dtype=np.float64)
        for lo, hi in _spans(self.n, self.rows):
            blk = _numpy_rows(self.X, lo, hi) - mean
            sq += np.einsum("ij,ij->j", blk, blk)
        return sq

    def class_squares(self, class_means: np.ndarray, inv_var: np.ndarray) -> np.ndarray:
        ss = np.zeros(self.c, dtype=np.float64)
        for lo, hi in _spans(self.n, self.rows):
            blk = _numpy_rows(self.X, lo, hi) - class_means[self.yi[lo:hi]]  # never in place
            blk *= blk
            ss += np.bincount(self.yi[lo:hi], weights=blk @ inv_var, minlength=self.c)
        return ss

    def moved(self, shift: Optional[np.ndarray], dtype: Any) -> Any:
        out = np.empty((self.n, self.d), dtype=dtype)
        check = shift is not None and self.needs_range_check(shift, dtype)
        for lo, hi in _spans(self.n, self.rows):
            if shift is None:
                out[lo:hi] = self.X[lo:hi] if isinstance(self.X, np.ndarray) else _numpy_rows(self.X, lo, hi)
                continue
            moved = _numpy_rows(self.X, lo, hi) + shift[self.yi[lo:hi]]
            out[lo:hi] = _checked_output(moved, dtype, lo) if check else moved
        if is_torch_tensor(self.X):  # outputs follow the input
            import torch

            return torch.from_numpy(out).to(self.X.device)
        return out


def _checked_output(moved: Any, dtype: Any, lo: int) -> Any:
    """``moved`` (float64 rows) if every value fits ``dtype``; ValueError naming the first row otherwise."""
    limit = float(np.finfo(dtype).max)
    ok = (abs(moved) <= limit).all(1)
    if not bool(ok.all()):
        first = lo + int(np.argmin(np.asarray(ok.cpu() if is_torch_tensor(ok) else ok)))
        raise ValueError(f"moved features row {first} does not fit {np.dtype(dtype).name} "
                         f"(a value beyond {limit:.3g}); scale the features down")
    return moved


class TorchPasses(RowPasses):
    """The passes with torch (float64) on a CUDA device; the rows are copied there chunk by chunk.

    Class sums use ``index_add_``, whose CUDA float64 atomics may round differently from run to
    run (last bits only)."""

    def __init__(self, X: Any, yi: np.ndarray, c: int, rows: int, device: Any) -> None:
        import torch

        super().__init__(X, yi, c, rows)
        self.torch, self.device = torch, torch.device(device)
        self.labels = torch.as_tensor(yi, dtype=torch.int64, device=self.device)

    def _rows(self, lo: int, hi: int) -> Any:
        part = self.X[lo:hi]
        if is_torch_tensor(part):
            return part.to(self.device, self.torch.float64)
        return self.torch.from_numpy(np.asarray(part, dtype=np.float64)).to(self.device)

    def _zeros(self, *shape: int) -> Any:
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def _numpy(self, t: Any) -> np.ndarray:
        return t.cpu().numpy()

    def class_and_pool_sums(self) -> Tuple[np.ndarray, np.ndarray]:
        class_sum, pool_sum = self._zeros(self.c, self.d), self._zeros(self.d)
        for lo, hi in _spans(self.n, self.rows):
            blk = self._rows(lo, hi)
            magnitude = blk.abs()
            ok = (magnitude <= MAX_ABS_VALUE).all(dim=1)
            if not bool(ok.all()):
                raise _bad_row_error(ok.cpu().numpy(), lo)
            self.peak = max(self.peak, float(magnitude.max()))
            class_sum.index_add_(0, self.labels[lo:hi], blk)
            pool_sum += blk.sum(dim=0)
        return self._numpy(class_sum), self._numpy(pool_sum)

    def pool_squares(self, mean: np.ndarray) -> np.ndarray:
        sq, mean_t = self._zeros(self.d), self.torch.from_numpy(mean).to(self.device)
        for lo, hi in _spans(self.n, self.rows):
            blk = self._rows(lo, hi) - mean_t
            sq += (blk * blk).sum(dim=0)
        return self._numpy(sq)

    def class_squares(self, class_means: np.ndarray, inv_var: np.ndarray) -> np.ndarray:
        ss = self._zeros(self.c)
        means_t = self.torch.from_numpy(class_means).to(self.device)
        inv_var_t = self.torch.from_numpy(inv_var).to(self.device)
        for lo, hi in _spans(self.n, self.rows):
            labels = self.labels[lo:hi]
            blk = self._rows(lo, hi) - means_t[labels]
            ss.index_add_(0, labels, (blk * blk) @ inv_var_t)
        return self._numpy(ss)

    def moved(self, shift: Optional[np.ndarray], dtype: Any) -> Any:
        torch = self.torch
        out_dtype = torch.float64 if dtype == np.float64 else torch.float32
        tensor_in = is_torch_tensor(self.X)
        out = torch.empty((self.n, self.d), dtype=out_dtype, device=self.X.device) if tensor_in else \
            np.empty((self.n, self.d), dtype=dtype)
        shift_t = None if shift is None else torch.from_numpy(shift).to(self.device)
        check = shift is not None and self.needs_range_check(shift, dtype)
        for lo, hi in _spans(self.n, self.rows):
            blk = self._rows(lo, hi)
            if shift_t is not None:
                blk = blk + shift_t[self.labels[lo:hi]]
                if check:
                    _checked_output(blk, dtype, lo)
            out[lo:hi] = blk.to(out.device, out_dtype) if tensor_in else blk.to(out_dtype).cpu().numpy()
        return out
