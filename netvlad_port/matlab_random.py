"""MATLAB's default random numbers, call for call: ``rng(seed)`` and then ``rand``, ``randperm``,
``randi`` and the Statistics Toolbox ``randsample`` (without replacement).

MATLAB's default generator is MT19937 ('twister'); ``rng(s)`` is ``init_genrand(s)``, with seed 0
meaning 5489 (``rng default``). ``rand`` returns ``genrand_res53`` doubles filled column-major,
which is exactly what numpy's legacy ``RandomState`` draws, so this class is a thin layer of MATLAB
semantics over it ([docs/matlab.md#random-numbers](../docs/matlab.md#random-numbers)). Indices are
MATLAB's, 1-based.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SEED = 5489  # MATLAB's seed 0 / `rng default`


class MatlabRandom:
    """Behaves as MATLAB after ``rng(seed)``."""

    def __init__(self, seed: int = 0):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """``rng(seed)``."""
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"rng seed must be in 0 .. 2^32 - 1, got {seed}")
        self._rs = np.random.RandomState(int(seed) or DEFAULT_SEED)
        self.draws = 0  # uniform doubles drawn since the seed (as the reference logs count them)

    def _uniform(self, n: int) -> np.ndarray:
        self.draws += n
        return self._rs.random_sample(n)

    def rand(self, *shape: int) -> np.ndarray:
        """``rand(m, n, ...)`` (``rand(n)`` is n x n), filled column-major."""
        if len(shape) == 1:
            shape = (shape[0], shape[0])
        n = int(np.prod(shape)) if shape else 1
        return self._uniform(n).reshape(shape or (1, 1), order="F")

    def randperm(self, n: int) -> np.ndarray:
        """``randperm(n)``: the stable sort order of ``rand(1, n)``, 1-based."""
        return np.argsort(self._uniform(int(n)), kind="stable") + 1

    def randi(self, imax: int, *shape: int) -> np.ndarray:
        """``randi(imax, m, n, ...)`` = ``ceil(imax * rand(m, n, ...))``."""
        return np.ceil(imax * self.rand(*(shape or (1,)))).astype(np.int64)

    def randsample(self, population, k: int) -> np.ndarray:
        """``randsample(n, k)`` or ``randsample(values, k)`` without replacement, as a column
        (a 1-D array). For 4k > n the first k of ``randperm(n)``; otherwise values are flagged with
        ``ceil(n * rand(1, k - found))`` until k distinct ones are, and returned in increasing order
        permuted by ``randperm(k)``."""
        values = None
        if np.ndim(population) > 0 and np.size(population) != 1:
            values = np.asarray(population).ravel(order="F")
            n = values.size
        else:
            n = int(np.asarray(population).ravel()[0])
        k = int(k)
        if not 0 <= k <= n:
            raise ValueError(f"randsample: cannot take {k} of {n} without replacement")
        if 4 * k > n:
            idx = self.randperm(n)[:k]
        else:
            flags = np.zeros(n, bool)
            found = 0
            while found < k:
                flags[np.ceil(n * self._uniform(k - found)).astype(np.int64) - 1] = True
                found = int(flags.sum())
            idx = (np.flatnonzero(flags) + 1)[self.randperm(k) - 1]
        return values[idx - 1] if values is not None else idx

    def get_state(self) -> dict:
        """The generator state as JSON-able data (MT19937 key and position)."""
        _, key, pos, _, _ = self._rs.get_state()
        return {"key": key.tolist(), "pos": int(pos), "draws": self.draws}

    def set_state(self, state: dict) -> None:
        self._rs.set_state(("MT19937", np.asarray(state["key"], np.uint32), int(state["pos"]), 0, 0.0))
        self.draws = int(state.get("draws", 0))
