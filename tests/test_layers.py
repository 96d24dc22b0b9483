"""MatConvNet layer semantics, each checked against an independent formula
(docs/matlab.md#matconvnet-operators, #layervlad)."""

import numpy as np
import pytest
import torch

from netvlad_port import fastpow
from netvlad_port.layers import Normalize, Pool, VLADCore, WholeL2Normalize, build_layer
from netvlad_port.matconvnet.spec import LayerSpec, canonicalise


def spec(t, name="l", weights=(), **params):
    s = LayerSpec(t, name, list(weights), params)
    canonicalise(s, name)
    return s


def test_vlad_flatten_is_k_fastest():
    """Element k + K*d of the flattened VLAD vector is cluster k, dimension d (docs/matlab.md#vlad-layout)."""
    d, k = 3, 4
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((1, 1, d, k)).astype(np.float32), rng.standard_normal((1, 1, d, k)).astype(np.float32)
    vlad = VLADCore(spec("layerVLAD", "vlad:core", [w1, w2], K=k, D=d)).double()
    x = torch.from_numpy(rng.standard_normal((1, d, 5, 6)))
    flat = WholeL2Normalize(LayerSpec("layerWholeL2Normalize", "postL2"))(vlad(x)).flatten().detach()
    xs = x[0].reshape(d, -1).numpy()  # D x M
    s = w1[0, 0].T.astype(np.float64) @ xs
    a = np.exp(s - s.max(0)) / np.exp(s - s.max(0)).sum(0)  # K x M
    v = np.stack([(a[j] * (xs + w2[0, 0, :, j : j + 1])).sum(1) for j in range(k)])  # K x D
    v /= np.linalg.norm(v) + 1e-12
    expected = v.reshape(-1, order="F")  # MATLAB reshape of the K x D matrix
    assert np.allclose(flat.numpy(), expected, atol=1e-12)
    assert not np.allclose(flat.numpy(), v.reshape(-1), atol=1e-6)  # cluster-major would differ


@pytest.mark.parametrize("pad,out_hw", [(0, (3, 4)), ([0, 1, 0, 1], (4, 5))])
def test_max_pool_padding_never_wins(pad, out_hw):
    pool = Pool(spec("pool", method="max", pool=[2, 2], stride=2, pad=pad))
    x = -torch.rand(1, 1, 7, 9) - 1  # all negative: a zero pad would win
    y = pool(x)
    assert y.shape[2:] == out_hw and (y < 0).all()


def test_avg_pool_divides_by_real_pixels():
    pool = Pool(spec("pool", method="avg", pool=[2, 2], stride=2, pad=[0, 1, 0, 1]))
    x = torch.arange(9.0).view(1, 1, 3, 3)
    y = pool(x)[0, 0]
    assert y.tolist() == [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]]


def lrn_reference(x, n, kappa, alpha, beta):
    c = x.shape[1]
    out = np.empty_like(x)
    for i in range(c):
        lo, hi = max(0, i - (n - 1) // 2), min(c - 1, i + n - 1 - (n - 1) // 2)
        out[:, i] = x[:, i] * (kappa + alpha * (x[:, lo : hi + 1] ** 2).sum(1)) ** -beta
    return out


@pytest.mark.parametrize("param", [(5, 1, 2e-5, 0.75), (4, 2, 1e-4, 0.75), (32, 1e-12, 1, 0.5), (3, 1, 1, 0.5)])
def test_normalize_window(param):
    x = np.random.default_rng(1).standard_normal((2, 16, 3, 4)) * 10
    layer = Normalize(spec("normalize", param=list(param))).double()
    assert np.allclose(
        layer(torch.from_numpy(x)).detach().numpy(), lrn_reference(x, int(param[0]), *param[1:]), rtol=1e-12
    )


def test_l2_normalize_epsilons_differ():
    """preL2: eps inside the root; postL2: eps outside (docs/matlab.md#normalisations)."""
    x = torch.full((1, 2, 1, 1), 1e-7, dtype=torch.float64)
    pre = Normalize(spec("normalize", param=[4, 1e-12, 1, 0.5])).double()(x)
    post = WholeL2Normalize(LayerSpec("layerWholeL2Normalize", "postL2"))(x)
    norm = np.sqrt(2) * 1e-7
    assert np.isclose(pre[0, 0, 0, 0].item(), 1e-7 / np.sqrt(norm**2 + 1e-12), rtol=1e-12)
    assert np.isclose(post[0, 0, 0, 0].item(), 1e-7 / (norm + 1e-12), rtol=1e-12)


def test_grouped_conv_as_caffe_stores_it():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((3, 3, 2, 6)).astype(np.float32)  # 4 input channels, 2 groups
    conv = build_layer(spec("conv", weights=[f, np.zeros(6, np.float32)], pad=1, stride=1), 4).double()
    x = torch.from_numpy(rng.standard_normal((1, 4, 5, 5)))
    y = conv(x)
    w = torch.from_numpy(f.astype(np.float64)).permute(3, 2, 0, 1)
    a = torch.nn.functional.conv2d(x[:, :2], w[:3], padding=1)
    b = torch.nn.functional.conv2d(x[:, 2:], w[3:], padding=1)
    assert torch.allclose(y, torch.cat([a, b], 1))


def test_asymmetric_conv_padding():
    f = np.ones((2, 2, 1, 1), np.float32)
    conv = build_layer(spec("conv", weights=[f], pad=[0, 1, 0, 1], stride=1), 1)
    y = conv(torch.ones(1, 1, 3, 3))[0, 0]
    assert y.tolist() == [[4, 4, 2], [4, 4, 2], [2, 2, 1]]


def test_fast_pow_error_and_bits():
    x = torch.logspace(-6, 6, 2001, dtype=torch.float64)
    approx = fastpow.fast_pow(x, -0.5)
    rel = (approx / x.pow(-0.5) - 1).abs()
    assert 1e-4 < rel.max() < 3e-3  # docs/matlab.md#matconvnet-operators: ~0.2 % at most for exponent -0.5
    assert fastpow.fast_pow(torch.tensor([1.0], dtype=torch.float64), -0.5).item() == 1.0


def _fast_pow_bits(x: np.ndarray, y: float) -> np.ndarray:
    """MatConvNet's fast_pow as its C code writes it, on the IEEE bit pattern (the reference)."""
    one = np.int64(1023 << 52)
    ix = x.view(np.int64) - one
    fx = (ix >> 52).astype(np.float64)
    mx = ((ix & ((1 << 52) - 1)) + one).view(np.float64) - 1
    plog, pexp = fastpow._PLOG, fastpow._PEXP
    mx2 = mx * mx
    t = y * (fx + mx * plog[0] + mx2 * plog[1] + mx2 * mx * plog[2])
    fz = np.floor(t)
    rz = t - fz
    rz2 = rz * rz
    tz = fz + rz * pexp[0] + rz2 * pexp[1] + rz2 * rz * pexp[2]
    return ((tz * float(1 << 52)).astype(np.int64) + one).view(np.float64)


def test_fast_pow_equals_the_bit_pattern_code():
    rng = np.random.default_rng(0)
    x = np.concatenate([10.0 ** rng.uniform(-9, 9, 200_000), [1.0, 2.0, 0.5, 4.0, np.nextafter(2.0, 0), 2.0**-30]])
    for y in (-0.75, -0.5, -1.0, 0.75):
        assert np.array_equal(fastpow.fast_pow(torch.from_numpy(x), y).numpy(), _fast_pow_bits(x, y))


def test_crop_to_dim_is_the_whole_l2_layer_on_the_first_components():
    """``cropToDim`` lives beside ``layerWholeL2Normalize`` (shared normalisation) and is still
    importable from ``extract``; its numbers are those of the formula it had there."""
    from netvlad_port.extract import crop_to_dim as from_extract
    from netvlad_port.layers.netvlad import WHOLE_L2_EPS, crop_to_dim

    assert from_extract is crop_to_dim
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(5, 40, generator=torch.Generator().manual_seed(2), dtype=dtype) * 3
        d = x[:, :16]
        assert torch.equal(crop_to_dim(x, 16), d / (d.norm(dim=1, keepdim=True) + WHOLE_L2_EPS))
        whole = WholeL2Normalize(LayerSpec("layerWholeL2Normalize", "finalL2"))(d[:, :, None, None])[:, :, 0, 0]
        assert torch.equal(crop_to_dim(x, 16), whole)
        assert crop_to_dim(x, None) is x and crop_to_dim(x, 40) is x and crop_to_dim(x, 99) is x
