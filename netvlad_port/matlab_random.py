"""MATLAB's default random numbers, call for call: ``rng(seed)`` and then ``rand``, ``randperm``,
``randi`` and the Statistics Toolbox ``randsample`` (without replacement).

MATLAB's default generator is MT19937 ('twister'); ``rng(s)`` is ``init_genrand(s)``, with seed 0
meaning 5489 (``rng default``). ``rand`` returns ``genrand_res53`` doubles filled column-major,
which is exactly what numpy's legacy ``RandomState`` draws, so :class:`MatlabRandom` is a thin layer
of MATLAB semantics over it ([docs/matlab.md#random-numbers](../docs/matlab.md#random-numbers)).
:class:`NumpyRandom` makes the same calls on numpy's PCG64 (``--rng numpy``). Indices are MATLAB's,
1-based.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SEED = 5489  # MATLAB's seed 0 / `rng default`
RNG_KINDS = ("matlab", "numpy")


class _Random:
    """The MATLAB calls, on a source of uniform doubles (``_uniform``)."""

    draws = 0  # uniform doubles drawn since the seed (as the reference logs count them)

    def _uniform(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def rand(self, *shape: int) -> np.ndarray:
        """``rand(m, n, ...)`` (``rand(n)`` is n x n, ``rand()`` 1 x 1), filled column-major."""
        if len(shape) == 1:
            shape = (shape[0], shape[0])
        shape = shape or (1, 1)
        return self._uniform(int(np.prod(shape))).reshape(shape, order="F")

    def randperm(self, n: int) -> np.ndarray:
        """``randperm(n)``: the stable sort order of ``rand(1, n)``, 1-based."""
        return np.argsort(self._uniform(int(n)), kind="stable") + 1

    def randi(self, imax: int, *shape: int) -> np.ndarray:
        """``randi(imax, m, n, ...)`` = ``ceil(imax * rand(m, n, ...))``."""
        return np.ceil(imax * self.rand(*(shape or (1,)))).astype(np.int64)

    def randsample(self, population, k: int) -> np.ndarray:
        """``randsample(n, k)`` (1-based indices) or ``randsample(values, k)`` (values), without
        replacement, as a 1-D array."""
        values = None
        if np.ndim(population) > 0 and np.size(population) != 1:
            values = np.asarray(population).ravel(order="F")
            n = values.size
        else:
            n = int(np.asarray(population).ravel()[0])
        k = int(k)
        if not 0 <= k <= n:
            raise ValueError(f"randsample: cannot take {k} of {n} without replacement")
        idx = self._sample(n, k)
        return values[idx - 1] if values is not None else idx

    def _sample(self, n: int, k: int) -> np.ndarray:
        """The Statistics Toolbox algorithm: for 4k > n the first k of ``randperm(n)``; otherwise
        values are flagged with ``ceil(n * rand(1, k - found))`` until k distinct ones are, and
        returned in increasing order permuted by ``randperm(k)``."""
        if 4 * k > n:
            return self.randperm(n)[:k]
        flags = np.zeros(n, bool)
        found = 0
        while found < k:
            flags[np.ceil(n * self._uniform(k - found)).astype(np.int64) - 1] = True
            found = int(flags.sum())
        return (np.flatnonzero(flags) + 1)[self.randperm(k) - 1]


class MatlabRandom(_Random):
    """Behaves as MATLAB after ``rng(seed)``."""

    def __init__(self, seed: int = 0):
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"rng seed must be in 0 .. 2^32 - 1, got {seed}")
        self._rs = np.random.RandomState(int(seed) or DEFAULT_SEED)
        self.draws = 0

    def _uniform(self, n: int) -> np.ndarray:
        self.draws += n
        return self._rs.random_sample(n)

    def get_state(self) -> dict:
        """The generator state as JSON-able data (MT19937 key and position)."""
        _, key, pos, _, _ = self._rs.get_state()
        return {"kind": "matlab", "key": key.tolist(), "pos": int(pos), "draws": self.draws}

    def set_state(self, state: dict) -> None:
        self._rs.set_state(("MT19937", np.asarray(state["key"], np.uint32), int(state["pos"]), 0, 0.0))
        self.draws = int(state.get("draws", 0))


class NumpyRandom(_Random):
    """The same calls on numpy's PCG64: statistically alike, not MATLAB's draws."""

    def __init__(self, seed: int = 0):
        self._g = np.random.default_rng(seed)
        self.draws = 0

    def _uniform(self, n: int) -> np.ndarray:
        self.draws += n
        return self._g.random(n)

    def _sample(self, n: int, k: int) -> np.ndarray:
        return self._g.choice(n, size=k, replace=False) + 1

    def get_state(self) -> dict:
        return {"kind": "numpy", "bit_generator": self._g.bit_generator.state, "draws": self.draws}

    def set_state(self, state: dict) -> None:
        self._g.bit_generator.state = state["bit_generator"]
        self.draws = int(state.get("draws", 0))


def make_rng(kind: str, seed: int) -> _Random:
    """``rng(seed)`` with MATLAB's generator (``"matlab"``) or numpy's (``"numpy"``)."""
    if kind not in RNG_KINDS:
        raise ValueError(f"rng must be one of {RNG_KINDS}, got {kind!r}")
    return MatlabRandom(seed) if kind == "matlab" else NumpyRandom(seed)


def as_rng(rng) -> _Random:
    """A :class:`MatlabRandom` / :class:`NumpyRandom` as is; a numpy ``Generator`` wrapped."""
    if isinstance(rng, _Random):
        return rng
    if isinstance(rng, np.random.Generator):
        wrapped = NumpyRandom()
        wrapped._g = rng
        return wrapped
    raise TypeError(f"expected a MatlabRandom, NumpyRandom or numpy Generator, got {type(rng).__name__}")


def matlab_round(x: float) -> int:
    """MATLAB's ``round`` (halves away from zero) of a non-negative number."""
    return int(np.floor(x + 0.5))
