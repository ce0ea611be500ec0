"""sgsc.core.quant: hand-computed quantisation, straight-through gradients, integer codes."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from sgsc.core.quant import (
    MAX_BITS,
    ChannelQuantizer,
    RoundSTE,
    effective_bits,
    init_exponent_maxabs,
    integer_codes,
    quantize,
)


def q1(w, b, e):
    """Quantise a single channel given as a list."""
    return quantize(torch.tensor([w]), torch.tensor([float(b)]), torch.tensor([float(e)]))[0]


def test_round_ste_forward_is_round_and_backward_identity():
    x = torch.tensor([-1.5, -0.5, 0.4, 0.5, 1.5, 2.7], requires_grad=True)
    y = RoundSTE.apply(x)
    assert torch.equal(y, torch.round(x.detach()))
    (y * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0))


def test_two_bits_range_is_minus2_to_1():
    # z = w; clamp to [-2, 1]; round half to even
    got = q1([-3.0, -1.6, -0.4, 0.4, 0.6, 2.0, 1.5], 2, 0)
    assert torch.equal(got, torch.tensor([-2.0, -2.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    assert not torch.signbit(got[2])  # round(-0.4) = -0.0 comes out as +0.0


def test_one_bit_with_negative_exponent():
    # e = -1: z = 2w, clamp to [-1, 0], round, times 1/2
    got = q1([0.3, -0.3, -0.2, 1.0, -4.0], 1, -1)
    assert torch.equal(got, torch.tensor([0.0, -0.5, 0.0, 0.0, -0.5]))


def test_eight_bits_with_negative_exponent():
    # e = -4: z = 16w -> [1.6, 160, -160, -1.75] -> clamp [-128, 127] -> round -> /16
    got = q1([0.1, 10.0, -10.0, -0.109375], 8, -4)
    assert torch.equal(got, torch.tensor([0.125, 127 / 16, -8.0, -0.125]))


def test_fractional_bits_shrink_the_range():
    # b = 2.5: range [-2^1.5, 2^1.5 - 1] = [-2.83, 1.83] -> codes -3..2 (fit 3 bits)
    got = q1([-5.0, -2.6, 1.7, 5.0, 0.3], 2.5, 0)
    assert torch.equal(got, torch.tensor([-3.0, -3.0, 2.0, 2.0, 0.0]))
    # b = 0.5: range [-0.71, -0.29] -> every value rounds to -1 or 0
    got = q1([-5.0, 5.0, 0.0], 0.5, 0)
    assert torch.equal(got, torch.tensor([-1.0, 0.0, 0.0]))


@pytest.mark.parametrize("b", [0.0, -1.5])
def test_zero_or_negative_bits_give_exact_positive_zeros(b):
    got = q1([-3.0, -0.2, 0.0, 0.7, 1e6], b, -3)
    assert torch.equal(got, torch.zeros(5))
    assert not torch.signbit(got).any()


def test_per_channel_broadcast_over_conv_weight():
    w = torch.full((3, 2, 2, 2), 0.3)
    got = quantize(w, torch.tensor([8.0, 0.0, 1.0]), torch.tensor([-2.0, 0.0, -1.0]))
    assert torch.equal(got[0], torch.full((2, 2, 2), 0.25))  # round(1.2) / 4
    assert torch.equal(got[1], torch.zeros(2, 2, 2))
    assert torch.equal(got[2], torch.zeros(2, 2, 2))  # z = 0.6 clamps to 0


def grads(w, b, e):
    w = torch.tensor(w, requires_grad=True)
    b = torch.tensor([float(b)], requires_grad=True)
    e = torch.tensor([float(e)], requires_grad=True)
    quantize(w[None], b, e).sum().backward()
    return w.grad, b.grad, e.grad


def test_weight_gradient_is_one_inside_zero_where_clamped():
    gw, gb, ge = grads([0.3, -1.2, 5.0, -7.0], 2, 0)  # range [-2, 1]
    assert torch.equal(gw, torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_bit_depth_gets_gradient_only_where_clamp_binds():
    _, gb, _ = grads([0.3, -1.2], 2, 0)  # inside the range
    assert gb.item() == 0.0
    # q = 2^e * hi(b) with hi = 2^(b-1) - 1: dq/db = ln2 * 2^(b-1) = ln2 * 2 for b = 2
    _, gb, _ = grads([5.0], 2, 0)
    assert gb.item() == pytest.approx(2 * math.log(2))
    # lo = -2^(b-1): dq/db = -ln2 * 2
    _, gb, _ = grads([-7.0], 2, 0)
    assert gb.item() == pytest.approx(-2 * math.log(2))


def test_exponent_gradient_inside_and_at_clamp():
    # inside: dq/de = ln2 * 2^e * (round(z) - z); w = 0.3, e = 0 -> ln2 * (0 - 0.3)
    _, _, ge = grads([0.3], 2, 0)
    assert ge.item() == pytest.approx(math.log(2) * -0.3)
    # clamped at hi = 1: q = 2^e * 1 -> dq/de = ln2 * 2^e = ln2 / 2 for e = -1
    _, _, ge = grads([5.0], 2, -1)
    assert ge.item() == pytest.approx(math.log(2) / 2)


def test_negative_bits_get_no_gradient():
    # relu kills the gradient: a channel at b <= 0 stays removed unless set by hand
    _, gb, _ = grads([5.0, -5.0], -0.5, 0)
    assert gb.item() == 0.0


def test_integer_codes_reproduce_quantize_bit_for_bit():
    torch.manual_seed(0)
    w = torch.randn(16, 5, 3, 3) * torch.rand(16, 1, 1, 1) * 3
    b = torch.tensor([8, 4, 2, 1, 0, -1, 2.5, 0.3, 7.9, 3, 3, 16, 5.5, 1.2, 6, 2])
    e = torch.randn(16) * 2 - 4  # non-integer exponents
    codes, bits = integer_codes(w, b, e)
    assert codes.dtype == torch.int32
    assert bits.tolist() == [8, 4, 2, 1, 0, 0, 3, 1, 8, 3, 3, 16, 6, 2, 6, 2]
    rebuilt = torch.exp2(e).view(-1, 1, 1, 1) * codes.float()
    expected = quantize(w, b, e)
    assert torch.equal(rebuilt.view(torch.int32), expected.view(torch.int32))
    # every code fits in bits[c]-bit two's complement
    flat = codes.view(16, -1)
    half = torch.where(bits > 0, 2 ** (bits - 1), 0)[:, None]
    assert (flat >= -half).all() and (flat <= (half - 1).clamp(min=0)).all()


def test_init_exponent_maxabs():
    w = torch.tensor([[0.5, -2.0], [0.0, 0.0], [1e-3, 1e-4]])
    e = init_exponent_maxabs(w, 8)
    assert e[0].item() == pytest.approx(math.log2(2.0 / 127))
    assert e[1].item() == pytest.approx(math.log2(2.0 / 127))  # zero row borrows layer max
    assert e[2].item() == pytest.approx(math.log2(1e-3 / 127))
    # the largest weight lands on the top code, nothing clips
    q = quantize(w, torch.full((3,), 8.0), e)
    assert q[0, 1].item() == pytest.approx(-2.0, rel=1e-6)
    assert torch.isfinite(init_exponent_maxabs(torch.zeros(2, 3), 8)).all()
    assert torch.isfinite(init_exponent_maxabs(w, 1)).all()  # no division by 0 codes


def test_maxabs_start_is_near_lossless_at_8_bits():
    torch.manual_seed(1)
    w = torch.randn(32, 64) * torch.rand(32, 1)
    quantizer = ChannelQuantizer.maxabs(w, 8.0)
    err = (quantizer(w) - w).norm() / w.norm()
    assert err < 0.01


def test_channel_quantizer_as_parametrization_and_select_channels():
    layer = nn.Linear(3, 4)
    parametrize.register_parametrization(
        layer, "weight", ChannelQuantizer.constant(4, 2.0, -8.0, like=layer.weight)
    )
    q = layer.parametrizations.weight[0]
    assert q.bit_depth.shape == (4,) and q.exponent.shape == (4,)
    assert torch.equal(q.bit_depth, torch.full((4,), 2.0))
    assert torch.equal(layer.weight, quantize(layer.parametrizations.weight.original,
                                              q.bit_depth, q.exponent))
    names = {n for n, _ in layer.named_parameters()}
    assert "parametrizations.weight.0.bit_depth" in names
    with torch.no_grad():
        q.bit_depth.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    q.select_channels(torch.tensor([3, 1]))
    assert isinstance(q.bit_depth, nn.Parameter)
    assert q.bit_depth.tolist() == [4.0, 2.0] and q.out_channels == 2


def test_channel_quantizer_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        ChannelQuantizer(torch.ones(3), torch.ones(4))


def test_bit_depths_beyond_24_act_as_24_and_get_no_gradient():
    w = torch.randn(3, 5) * 1e8  # large enough for the clamp to bind at 24 bits
    b = torch.tensor([24.0, 25.5, 32.0], requires_grad=True)
    e = torch.zeros(3)
    q = quantize(w, b, e)
    assert torch.equal(q[1:], quantize(w[1:], torch.tensor([24.0, 24.0]), e[1:]))
    codes, bits = integer_codes(w, b, e)
    assert bits.tolist() == [24, 24, 24]
    assert codes.max() == 2**23 - 1 and codes.min() == -(2**23)  # the 24-bit range, exactly
    q.sum().backward()
    assert b.grad[1] == 0 and b.grad[2] == 0
    assert effective_bits(torch.tensor([-1.0, 7.5, 99.0])).tolist() == [0.0, 7.5, MAX_BITS]


def test_a_start_above_24_bits_begins_at_24_with_a_24_bit_exponent():
    w = torch.randn(4, 6)
    wide, top = ChannelQuantizer.maxabs(w, 32.0), ChannelQuantizer.maxabs(w, 24.0)
    assert torch.equal(wide.bit_depth, top.bit_depth) and torch.equal(wide.exponent, top.exponent)
    assert torch.allclose(wide(w), w, atol=1e-6)  # near-lossless, not clipped
