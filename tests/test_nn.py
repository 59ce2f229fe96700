"""fastconv.nn: layer gradients vs central differences, the reference backward ops and PyTorch;
Sequential, softmax cross-entropy, the optimizers, and a few training steps."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import nn, reference
from _helpers import HAVE_TORCH, LAYOUTS, TORCH_REASON, assert_close, to_nhwc

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F


def numeric_grad(f, a, eps=1e-6):
    """Central-difference gradient of the scalar ``f()`` with respect to ``a`` (changed in place
    and restored)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        up = f()
        a[i] = old - eps
        down = f()
        a[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def check_layer_gradients(layer, x, rng):
    """backward() of ``sum(forward(x) * r)`` vs central differences, for x and every param."""
    r = rng.standard_normal(layer.forward(x).shape)

    def loss():
        return float((layer.forward(x) * r).sum())

    layer.forward(x)
    gx = layer.backward(r)
    grads = {k: g.copy() for k, g in layer.grads.items()}
    if gx is not None:
        np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    for k, p in layer.params.items():
        np.testing.assert_allclose(grads[k], numeric_grad(loss, p), rtol=1e-6, atol=1e-8,
                                   err_msg=k)
    return gx, grads


def image(rng, shape, layout, distinct=False):
    """A float64 batch in ``layout`` (``shape`` is NCHW); ``distinct`` values are 0.01 apart, so
    no max-pool window is near a tie and no value near a ReLU kink."""
    n = int(np.prod(shape))
    x = ((rng.permutation(n) - n / 2 + 0.5) * 0.01 if distinct
         else rng.standard_normal(n)).reshape(shape)
    return to_nhwc(x) if layout == "NHWC" else x


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), (1, "same")])
def test_conv2d_gradients(layout, stride, padding, rng):
    layer = nn.Conv2d(2, 3, 3, stride, padding, layout=layout, dtype=np.float64, rng=rng)
    layer.params["bias"][:] = rng.standard_normal(3)
    x = image(rng, (2, 2, 5, 6), layout)
    gx, grads = check_layer_gradients(layer, x, rng)
    # The same numbers as the reference backward.
    g = rng.standard_normal(layer.forward(x).shape)
    got_x = layer.backward(g)
    want = reference.conv2d_backward(g, x, layer.params["weight"], stride, padding,
                                     layout=layout)
    for got, ref in zip((got_x, layer.grads["weight"], layer.grads["bias"]), want):
        assert_close(got, ref, reduction_length=50)


def test_conv2d_without_input_grad(rng):
    layer = nn.Conv2d(1, 2, 3, padding=1, dtype=np.float64, rng=rng, input_grad=False)
    x = image(rng, (1, 1, 4, 4), "NCHW")
    layer.forward(x)
    assert layer.backward(np.ones((1, 2, 4, 4))) is None
    assert layer.grads["bias"].tolist() == [16.0, 16.0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_init_and_layouts(layout, rng):
    layer = nn.Conv2d(4, 32, 5, layout=layout, rng=np.random.default_rng(0))
    w = layer.params["weight"]
    assert w.shape == ((32, 4, 5, 5) if layout == "NCHW" else (5, 5, 4, 32))
    assert w.dtype == np.float32 and w.flags.c_contiguous
    assert abs(w.std() - np.sqrt(2 / 100)) < 0.01  # He init, 3200 samples
    assert not layer.params["bias"].any()
    nchw = nn.Conv2d(4, 32, 5, rng=np.random.default_rng(0)).params["weight"]
    if layout == "NHWC":  # the same weights, as HWIO
        np.testing.assert_array_equal(w, nchw.transpose(2, 3, 1, 0))
    assert nn.Conv2d(1, 1, 3, layout=layout.lower()).layout == layout
    for make in (lambda: nn.Conv2d(1, 1, 3, layout="NCWH"), lambda: nn.MaxPool2d(2, layout=1)):
        with pytest.raises(ValueError, match="layout must be one of"):
            make()


def test_relu_gradients(rng):
    x = image(rng, (2, 3, 4, 4), "NCHW", distinct=True)
    check_layer_gradients(nn.ReLU(), x, rng)
    g = rng.standard_normal(x.shape)
    layer = nn.ReLU()
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(g), reference.relu_backward(g, x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel_size, stride, padding", [(2, None, 0), (3, 2, 1), (3, 1, 0)])
def test_max_pool_gradients(layout, kernel_size, stride, padding, rng):
    layer = nn.MaxPool2d(kernel_size, stride, padding, layout=layout)
    x = image(rng, (2, 3, 6, 7), layout, distinct=True)
    check_layer_gradients(layer, x, rng)
    g = rng.standard_normal(layer.forward(x).shape)
    np.testing.assert_array_equal(
        layer.backward(g),
        reference.max_pool2d_backward(g, x, kernel_size, stride, padding, layout=layout))


def test_max_pool_ties_go_to_the_first_maximum():
    layer = nn.MaxPool2d(2)
    layer.forward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(layer.backward(np.full((1, 1, 1, 1), 5.0)),
                                  [[[[5.0, 0.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool_gradients(layout, rng):
    layer = nn.AvgPool2d(3, 2, 1, layout=layout)
    x = image(rng, (2, 2, 5, 6), layout)
    gx, _ = check_layer_gradients(layer, x, rng)
    g = rng.standard_normal(layer.forward(x).shape)
    assert_close(layer.backward(g),
                 reference.avg_pool2d_backward(g, x.shape, 3, 2, 1, layout=layout),
                 reduction_length=9)


def test_linear_and_flatten_gradients(rng):
    check_layer_gradients(nn.Linear(5, 3, dtype=np.float64, rng=rng), rng.standard_normal((4, 5)),
                          rng)
    flat = nn.Flatten()
    x = rng.standard_normal((2, 3, 4, 5))
    assert flat.forward(x).shape == (2, 60)
    g = rng.standard_normal((2, 60))
    np.testing.assert_array_equal(flat.backward(g), g.reshape(x.shape))
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 5\)"):
        nn.Linear(5, 3).forward(np.zeros((2, 6)))


def tiny_net(layout, dtype=np.float64, seed=0, pool=nn.MaxPool2d):
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, layout=layout, dtype=dtype, rng=rng), nn.ReLU(),
        pool(2, layout=layout), nn.Conv2d(3, 4, 3, layout=layout, dtype=dtype, rng=rng),
        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3, dtype=dtype, rng=rng))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d], ids=lambda p: p.__name__)
def test_sequential_gradients_with_cross_entropy(layout, pool, rng):
    model = tiny_net(layout, pool=pool)
    for layer in model.layers:  # nonzero biases, so the check covers them at ReLU kinks too
        if "bias" in layer.params:
            layer.params["bias"][:] = 0.1 * rng.standard_normal(layer.params["bias"].shape)
    x = image(rng, (3, 2, 8, 8), layout)
    labels = np.array([0, 2, 1])

    def loss():
        return nn.softmax_cross_entropy(model.forward(x), labels)[0]

    _, grad = nn.softmax_cross_entropy(model.forward(x), labels)
    gx = model.backward(grad)
    pairs = model.parameters()
    assert len(pairs) == 6  # weight and bias of three layers
    got = [g.copy() for _, g in pairs]
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-5, atol=1e-9)
    for (p, _), g in zip(pairs, got):
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=1e-5, atol=1e-9)


def test_layouts_agree(rng):
    """NCHW and NHWC nets with the same weights give the same loss and gradients."""
    nchw, nhwc = tiny_net("NCHW"), tiny_net("NHWC")
    w = nchw[-1].params["weight"]  # NHWC flattens (h, w, c): permute the dense rows to match
    nhwc[-1].params["weight"][:] = w.reshape(4, 2, 2, 3).transpose(1, 2, 0, 3).reshape(16, 3)
    x = rng.standard_normal((3, 2, 8, 8))
    labels = np.array([1, 0, 2])
    results = []
    for model, xl in ((nchw, x), (nhwc, to_nhwc(x))):
        loss, grad = nn.softmax_cross_entropy(model.forward(xl), labels)
        results.append((loss, model.backward(grad), model[0].grads["weight"]))
    (l1, gx1, gw1), (l2, gx2, gw2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    np.testing.assert_allclose(to_nhwc(gx1), gx2, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gw1.transpose(2, 3, 1, 0), gw2, rtol=1e-10, atol=1e-14)


@pytest.mark.skipif(not HAVE_TORCH, reason=TORCH_REASON)
def test_sequential_matches_pytorch_autograd(rng):
    model = tiny_net("NCHW")
    x = rng.standard_normal((3, 2, 8, 8))
    labels = np.array([2, 0, 1])
    loss, grad = nn.softmax_cross_entropy(model.forward(x), labels)
    gx = model.backward(grad)

    c1, c2, dense = model[0].params, model[3].params, model[6].params
    t = {k: torch.tensor(v, requires_grad=True) for k, v in [
        ("x", x), ("w1", c1["weight"]), ("b1", c1["bias"]), ("w2", c2["weight"]),
        ("b2", c2["bias"]), ("w3", dense["weight"]), ("b3", dense["bias"])]}
    h = F.max_pool2d(F.relu(F.conv2d(t["x"], t["w1"], t["b1"], padding=1)), 2)
    h = F.relu(F.conv2d(h, t["w2"], t["b2"])).flatten(1) @ t["w3"] + t["b3"]
    tloss = F.cross_entropy(h, torch.tensor(labels))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    np.testing.assert_allclose(gx, t["x"].grad.numpy(), rtol=1e-10, atol=1e-14)
    for layer, (wk, bk) in ((model[0], ("w1", "b1")), (model[3], ("w2", "b2")),
                            (model[6], ("w3", "b3"))):
        np.testing.assert_allclose(layer.grads["weight"], t[wk].grad.numpy(), rtol=1e-10,
                                   atol=1e-14)
        np.testing.assert_allclose(layer.grads["bias"], t[bk].grad.numpy(), rtol=1e-10,
                                   atol=1e-14)


def test_softmax_cross_entropy(rng):
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    loss, grad = nn.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(4), labels]).mean(), rel=1e-12)
    np.testing.assert_allclose(
        grad, numeric_grad(lambda: nn.softmax_cross_entropy(logits, labels)[0], logits),
        rtol=1e-6, atol=1e-10)
    # Stable for huge logits, dtype kept.
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]], dtype=np.float32)
    loss, grad = nn.softmax_cross_entropy(big, [1, 0])
    assert loss == pytest.approx(500.0) and grad.dtype == np.float32
    np.testing.assert_allclose(grad, [[0.5, -0.5], [0.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="`labels`"):
        nn.softmax_cross_entropy(logits, [0, 1, 2, 5])
    with pytest.raises(ValueError, match="`logits`"):
        nn.softmax_cross_entropy(logits, [0, 1])


def test_sgd_step():
    p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    opt = nn.SGD([(p, g)], lr=0.1, momentum=0.9)
    opt.step()
    np.testing.assert_allclose(p, [0.95, 2.1])
    opt.step()  # v = 0.9 * g + g
    np.testing.assert_allclose(p, [0.95 - 0.095, 2.1 + 0.19])


def test_adam_step():
    p, g = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1e-3, 0.0])
    opt = nn.Adam([(p, g)], lr=0.01)
    opt.step()  # the first bias-corrected step is lr * sign(g)
    np.testing.assert_allclose(p, [0.99, 2.01, 3.0], rtol=1e-6)
    g[:] = 0
    opt.step()  # momentum keeps moving
    assert p[0] < 0.99 and p[1] > 2.01 and p[2] == 3.0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps_decrease_the_loss(layout, optimizer, rng):
    model = tiny_net(layout, dtype=np.float32, seed=1)
    x = rng.standard_normal((12, 2, 8, 8)).astype(np.float32)
    x = to_nhwc(x) if layout == "NHWC" else x
    labels = np.arange(12) % 3
    opt = (nn.SGD(model.parameters(), lr=0.05) if optimizer == "sgd"
           else nn.Adam(model.parameters(), lr=0.01))
    losses = []
    for _ in range(15):
        loss, grad = nn.softmax_cross_entropy(model.forward(x), labels)
        model.backward(grad)
        opt.step()
        losses.append(loss)
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.dtype == np.float32 for p, _ in model.parameters())


def test_layers_call_the_fast_ops(monkeypatch, rng):
    """Every forward and backward pass goes through the public fastconv op."""
    calls = []
    for name in ("conv2d", "relu", "max_pool2d", "avg_pool2d", "conv2d_backward",
                 "relu_backward", "max_pool2d_backward", "avg_pool2d_backward"):
        real = getattr(fastconv, name)
        monkeypatch.setattr(fastconv, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    for pool in (nn.MaxPool2d, nn.AvgPool2d):
        model = tiny_net("NCHW", pool=pool)
        _, grad = nn.softmax_cross_entropy(model.forward(rng.standard_normal((2, 2, 8, 8))),
                                           [0, 1])
        model.backward(grad)
    assert sorted(set(calls)) == sorted(["conv2d", "relu", "max_pool2d", "avg_pool2d",
                                         "conv2d_backward", "relu_backward",
                                         "max_pool2d_backward", "avg_pool2d_backward"])


def test_sequential_container():
    model = tiny_net("NCHW")
    assert len(model) == 7 and isinstance(model[2], nn.MaxPool2d)
    assert "Conv2d(weight (3, 2, 3, 3)" in repr(model)
