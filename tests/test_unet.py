"""unet.py: shapes at 32, 64 and 128 px, the time input matters, zero-initialised outputs,
labels and classifier-free guidance, and the speed-ups against the layers they replace."""
import pytest
import torch
import torch.nn.functional as F

import ddpm
from unet import (Attention, DenseGrad, GroupNorm, ResBlock, UNet, Upsample, guided,
                  timestep_embedding)


def randomise_zero_layers(net):
    """The zero-initialised last layers make a new network output 0 for any input; undo that."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_at_each_resolution(size):
    torch.manual_seed(0)
    net = UNet(ch=32)  # the default layout, narrower, to keep the CPU test fast
    x = torch.randn(2, 3, size, size)
    assert net(x, torch.tensor([0, 999])).shape == (2, 3, size, size)


def test_new_network_predicts_zero_and_time_changes_the_output():
    torch.manual_seed(0)
    net = UNet(ch=32, ch_mult=(1, 2), attn_levels=(1,), dropout=0.0).eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    assert net(x, torch.tensor([3, 700])).abs().max() == 0  # every residual branch starts at zero
    randomise_zero_layers(net)
    out = net(x, torch.tensor([3, 700]))
    assert (out[0] - out[1]).abs().max() > 1e-3 * out.abs().max()
    torch.testing.assert_close(net(x[:1], torch.tensor([3])), out[:1])  # and nothing else does


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    net = UNet(ch=32, ch_mult=(1, 2), attn_levels=(1,), dropout=0.0).eval()
    randomise_zero_layers(net)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    ref = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_group_norm_from_channel_statistics_is_group_norm(fmt):
    """GroupNorm (per-channel statistics, combined by the law of total variance) against
    F.group_norm: output and every gradient, and channels_last stays channels_last. The input
    has a mean far from 0 and channels of different means, where a wrong combination shows."""
    torch.manual_seed(0)
    gn = GroupNorm(8, 32)
    with torch.no_grad():
        gn.weight.normal_(), gn.bias.normal_()
    x = (torch.randn(3, 32, 8, 8) * 2 + torch.randn(1, 32, 1, 1) * 3 + 5).to(memory_format=fmt)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w, b = gn.weight.detach().clone().requires_grad_(), gn.bias.detach().clone().requires_grad_()
    ref, out = F.group_norm(x1, 8, w, b, gn.eps), gn(x2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=fmt)
    g = torch.randn_like(ref)
    (ref * g).sum().backward(), (out * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gn.weight.grad, w.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gn.bias.grad, b.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_upsample_is_nearest_neighbour(fmt):
    """Upsample against F.interpolate(mode="nearest"): every output pixel copies its 2x2 block's
    source, so the input's gradient is the sum of the output gradient over each block."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4).to(memory_format=fmt)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = F.interpolate(x1, scale_factor=2, mode="nearest"), Upsample()(x2)
    assert out.shape == (2, 5, 6, 8) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    (ref * g).sum().backward(), (out * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(x2.grad, g.view(2, 5, 3, 2, 4, 2).sum((3, 5)))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_dense_grad_is_the_identity_with_a_dense_gradient(fmt):
    """DenseGrad passes x through and its gradient back unchanged in value, but a strided gradient
    (a channel slice of a concatenation's, as in the decoder) comes back dense in x's layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5).to(memory_format=fmt).requires_grad_()
    y = DenseGrad.apply(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    big = torch.randn(2, 7, 3, 5).to(memory_format=fmt)
    g = big[:, 1:5]  # strided in both layouts
    assert not g.is_contiguous() and not g.is_contiguous(memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g, rtol=0, atol=0)
    assert gx.is_contiguous(memory_format=fmt)


def test_timestep_embedding():
    """[cos(t w_i), sin(t w_i)] with w_i = 10000^(-i/half): at t = 0 it is [1..1, 0..0]."""
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    w = 10_000 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(e[1], torch.cat([torch.cos(10 * w), torch.sin(10 * w)]))


def test_resblock_is_adagn_between_two_convs():
    """ResBlock(x, emb) = skip(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))) (1 + scale) + shift)), with
    (scale, shift) = Linear(SiLU(emb)) (Dhariwal & Nichol 2021, Sec. 3), written out here with
    F ops."""
    torch.manual_seed(0)
    block = ResBlock(8, 16, 12, dropout=0.0).eval()
    randomise_zero_layers(block)
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 12)
    h = block.conv1(F.silu(F.group_norm(x, 8, block.norm1.weight, block.norm1.bias)))
    scale, shift = (F.linear(F.silu(emb), block.emb.weight, block.emb.bias)).chunk(2, dim=1)
    h = F.group_norm(h, 16, block.norm2.weight, block.norm2.bias) * (1 + scale[..., None, None])
    h = h + shift[..., None, None]
    ref = F.conv2d(x, block.skip.weight, block.skip.bias) + block.conv2(F.silu(h))
    torch.testing.assert_close(block(x, emb), ref, rtol=1e-5, atol=1e-5)


def test_attention_is_softmax_qk_v_per_head():
    """x + proj(softmax(q k^T / sqrt(d)) v), per head of 64 channels, over the H*W positions."""
    torch.manual_seed(0)
    attn = Attention(128).eval()
    randomise_zero_layers(attn)
    x = torch.randn(2, 128, 3, 5)
    # [B, HW, C]
    h = F.group_norm(x, 32, attn.norm.weight, attn.norm.bias).flatten(2).transpose(1, 2)
    q, k, v = attn.qkv(h).chunk(3, dim=2)
    heads = [torch.softmax(q[..., i:i + 64] @ k[..., i:i + 64].transpose(1, 2) / 8, -1)
             @ v[..., i:i + 64] for i in range(0, 128, 64)]
    out = attn.proj(torch.cat(heads, dim=2)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(attn(x), x + out, rtol=1e-5, atol=1e-5)


def conditional_net():
    torch.manual_seed(0)
    net = UNet(ch=32, ch_mult=(1, 2), attn_levels=(1,), num_classes=3).eval()
    randomise_zero_layers(net)
    t, c = torch.tensor([5, 500, 900, 0]), torch.tensor([0, 1, 2, 1])
    return net, torch.randn(4, 3, 16, 16), t, c


def test_labels_matter_none_is_class_k_and_no_classes_keeps_the_unconditional_weights():
    net, x, t, c = conditional_net()
    out = net(x, t, c)
    assert (out - net(x, t, (c + 1) % 3)).abs().max() > 1e-3 * out.abs().max()
    torch.testing.assert_close(net(x, t), net(x, t, torch.full_like(c, 3)))  # None: "no label"
    plain = UNet(ch=32, ch_mult=(1, 2), attn_levels=(1,), num_classes=0).state_dict()
    assert not any("label" in k for k in plain)  # K = 0: no label embedding at all
    assert set(net.state_dict()) - set(plain) == {"label_emb.weight"}  # K + 1 rows
    assert net.label_emb.weight.shape[0] == 4


def test_guidance_at_w_0_is_conditional_and_at_w_minus_1_unconditional():
    """(1 + w) out_c - w out_none from one batched call: w = 0 and w = -1 give the two networks
    to float precision (the batch of 2B only changes the order of float sums, not the math)."""
    net, x, t, c = conditional_net()
    with torch.no_grad():
        torch.testing.assert_close(guided(net, x, t, c, 0.0), net(x, t, c), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(guided(net, x, t, c, -1.0), net(x, t), rtol=1e-5, atol=1e-6)
        w2 = guided(net, x, t, c, 2.0)
        torch.testing.assert_close(w2, 3 * net(x, t, c) - 2 * net(x, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guiding_x0_or_v_outputs_guides_eps_alike(prediction):
    """Guiding in a network's own units (Eq. 6 with eps, x0 or v outputs) gives the same x0 and eps,
    as ddpm.split_prediction's conversions are affine and 1 + w - w = 1; checked at three noise
    levels with arbitrary conditional and unconditional eps, converted to each kind of output."""
    gen = torch.Generator().manual_seed(0)
    x_t, eps_c, eps_u = (torch.randn(3, 2, 5, generator=gen) for _ in range(3))
    abar, w = torch.tensor([0.99, 0.5, 0.01])[:, None, None], 2.5
    x0_of = lambda eps: (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()  # noqa: E731  (DDPM Eq. 4)
    out_of = {"eps": lambda e: e, "x0": x0_of,
              "v": lambda e: abar.sqrt() * e - (1 - abar).sqrt() * x0_of(e)}[prediction]
    guided_out = (1 + w) * out_of(eps_c) - w * out_of(eps_u)
    x0, eps = ddpm.split_prediction(prediction, guided_out, x_t, abar)
    eps_g = (1 + w) * eps_c - w * eps_u  # Eq. 6 itself
    torch.testing.assert_close(eps, eps_g, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, x0_of(eps_g), rtol=1e-4, atol=1e-3)
