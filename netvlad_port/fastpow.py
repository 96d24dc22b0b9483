"""MatConvNet's CPU ``vl_nnnormalize``: the MEX is compiled with ``VL_NNNORMALIZE_FAST`` and computes
(kappa + alpha * acc)^-beta with a polynomial ``fast_pow`` on the bit pattern (~2e-3 relative error).
MATLAB features computed on a CPU carry that error; the GPU kernel uses exact ``pow``.

Emulated here as tests/data/parity/README.md ("Tolerances to expect", CPU mode) and
docs/matlab.md#matconvnet-operators describe it, to match dumps made on a MATLAB CPU: the window
sum of squares is accumulated channel by channel in float32 (sliding window, as the MEX does),
``fast_pow`` runs in float64, and ``y = float32(double(x) * z)``. Inference only: not differentiable.
"""

from __future__ import annotations

import torch

_PLOG = (1.442695040888963, -0.606737602222409, 0.164042561333445)
_PEXP = (0.693147180559945, 0.227411277760219, 0.079441541679836)
_TWO52 = float(1 << 52)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    return torch.pow(torch.full_like(e, 2.0), e)


def fast_pow(x: torch.Tensor, y: float) -> torch.Tensor:
    """MatConvNet's double ``fast_pow(x, y)`` for x > 0: polynomial log2 of x, times y, polynomial
    exp2. The C code reads and writes the IEEE bit pattern (exponent e and mantissa fraction f of
    x = 2^e (1 + f); the result's bits are trunc(tz 2^52) + (1023 << 52)); the same numbers are
    formed here with float64 arithmetic, all steps exact, so that the graph exports to ONNX (tests
    compare it with the bit-pattern form)."""
    x = x.to(torch.float64)
    e = torch.floor(torch.log2(x))
    m = x / _pow2(e)
    e = e - (m < 1).to(x.dtype) + (m >= 2).to(x.dtype)  # log2 rounded across a power of two
    fx, mx = e, x / _pow2(e) - 1
    mx2 = mx * mx
    t = y * (fx + mx * _PLOG[0] + mx2 * _PLOG[1] + mx2 * mx * _PLOG[2])
    fz = torch.floor(t)
    rz = t - fz
    rz2 = rz * rz
    tz = fz + rz * _PEXP[0] + rz2 * _PEXP[1] + rz2 * rz * _PEXP[2]
    q = tz * _TWO52
    q = torch.where(q >= 0, torch.floor(q), torch.ceil(q))  # trunc: the result's bits less the bias, exact
    exponent = torch.floor(q / _TWO52)
    return (1 + (q - exponent * _TWO52) / _TWO52) * _pow2(exponent)


@torch.no_grad()
def normalize_cpu(x: torch.Tensor, n: int, kappa: float, alpha: float, beta: float) -> torch.Tensor:
    """``vl_nnnormalize`` forward as MatConvNet's CPU MEX computes it; x is N x C x H x W."""
    x32 = x.to(torch.float32)
    c = x32.shape[1]
    m1 = (n - 1) // 2
    m2 = n - m1 - 1
    acc = torch.zeros_like(x32[:, 0])
    sums = []
    for t in range(-m2, c):
        tm, tp = t - m1 - 1, t + m2
        if tm >= 0 and tp < c:
            acc = acc + (x32[:, tp] * x32[:, tp] - x32[:, tm] * x32[:, tm])
        elif tm < 0 and tp < c:
            acc = acc + x32[:, tp] * x32[:, tp]
        elif tm >= 0 and tp >= c:
            acc = acc - x32[:, tm] * x32[:, tm]
        if t >= 0:
            sums.append(acc)
    z = fast_pow(kappa + alpha * torch.stack(sums, 1).to(torch.float64), -beta)
    return (x32.to(torch.float64) * z).to(torch.float32).to(x.dtype)
