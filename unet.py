"""U-Net noise predictor shared by ddpm.py (which trains it) and ddim.py (which samples from it).

The architecture of DDPM (Ho et al. 2020, arXiv 2006.11239v2, Appendix B: a PixelCNN++-style U-Net
with GroupNorm, sinusoidal time embedding and self-attention at low resolution), with two changes
from "Diffusion Models Beat GANs" (Dhariwal & Nichol 2021, arXiv 2105.05233v4, Sec. 3): the time
embedding scales and shifts the normalised activations (AdaGN), and attention is multi-head
(64 channels a head).

    net = UNet()                        # the 64x64 network that `python ddpm.py --train` trains
    eps = net(x_t, t)                   # x_t [B, 3, H, W], t [B] integer steps -> [B, 3, H, W]
    net = UNet(num_classes=K)           # class-conditional: net(x_t, t, c), c [B] in 0..K (K: none)
    out = guided(net, x_t, t, c, w)     # classifier-free guidance (Ho & Salimans 2022)

H and W must be multiples of 2 ** (len(ch_mult) - 1): 8 for the default, so 32, 64 and 128 px all
work. The last layer of every residual branch and the output layer start at zero, so a new network
predicts 0 and each block starts as the identity.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# --- The network ----------------------------------------------------------------------------------
def group_norm(ch):
    """GroupNorm with 32 groups where the width allows it (DDPM Appendix B)."""
    return GroupNorm(math.gcd(32, ch), ch)

def zero(module):
    """Zero a layer's parameters, so that its block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module

def timestep_embedding(t, dim):
    """Sinusoidal embedding of the step t, as in the Transformer (Vaswani et al. 2017, Sec. 3.5):
    t [B] (ints or floats) -> [B, dim] = [cos(t w_i), sin(t w_i)], w_i = 10000^(-i/half)."""
    half = dim // 2
    w = torch.exp(-math.log(10_000)
                  * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    tw = t.float()[:, None] * w[None]
    return torch.cat([torch.cos(tw), torch.sin(tw)], dim=1)

class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding as scale and shift in between (AdaGN)."""

    def __init__(self, c_in, c_out, emb_dim, dropout):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift  # AdaGN: GroupNorm(h) (1 + y_s) + y_b
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))

class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, through F.scaled_dot_product_attention."""

    def __init__(self, ch, head_dim=64):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm, self.qkv, self.proj = (group_norm(ch), nn.Linear(ch, 3 * ch),
                                          zero(nn.Linear(ch, ch)))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]; a view when x is channels_last
        q, k, v = self.qkv(h).view(B, H * W, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C/heads]
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))
        return x + h.transpose(1, 2).reshape(B, C, H, W)

class UNet(nn.Module):
    """eps_theta(x_t, t[, c]): [B, C, H, W], [B][, B] -> [B, C, H, W]. Defaults: 39.6M parameters.
    num_classes K > 0 adds a label embedding to the time embedding (ADM Sec. 3), K+1 rows: row K
    is "no label", which classifier-free guidance trains by label dropout; K = 0: no labels."""

    def __init__(self, in_ch=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(2, 3),
                 dropout=0.0, num_classes=0):
        super().__init__()
        self.ch, emb_dim, self.num_classes = ch, 4 * ch, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        if num_classes:  # absent otherwise: an unconditional network's weights stay as they were
            self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        # Encoder: at each level, residual blocks (with attention at attn_levels), then a
        # stride-2 conv. Every output is kept for the decoder's skip connections; `chans` tracks
        # their widths.
        self.down, chans, c = nn.ModuleList(), [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(self.block(c, ch * mult, emb_dim, dropout, level in attn_levels))
                c = ch * mult
                chans.append(c)
            if level < len(ch_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                chans.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), Attention(c),
                                  ResBlock(c, c, emb_dim, dropout)])
        # Decoder: one more block per level than the encoder, each taking a skip by concatenation.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(self.block(c + chans.pop(), ch * mult, emb_dim, dropout,
                                          level in attn_levels))
                c = ch * mult
            if level > 0:
                self.up.append(nn.Sequential(Upsample(), nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(group_norm(c), nn.SiLU(), zero(nn.Conv2d(c, in_ch, 3, padding=1)))

    @staticmethod
    def block(c_in, c_out, emb_dim, dropout, attn):
        layers = [ResBlock(c_in, c_out, emb_dim, dropout)] + ([Attention(c_out)] if attn else [])
        return nn.ModuleList(layers)

    def forward(self, x, t, c=None):
        emb = self.time_mlp(timestep_embedding(t, self.ch))
        if self.num_classes:  # c None: no label for any image
            emb = emb + self.label_emb(torch.full((len(x),), self.num_classes, device=x.device)
                                       if c is None else c)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = self.run(layer, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = self.run(layer, h, emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):  # a block: concatenate the matching skip first
                h = torch.cat([DenseGrad.apply(h), skips.pop()], dim=1)
            h = self.run(layer, h, emb)
        return self.out(h)

    @staticmethod
    def run(layer, h, emb):
        """Apply a conv, an up-sampler, a ResBlock, an Attention, or a block list of those."""
        for m in layer if isinstance(layer, nn.ModuleList) else [layer]:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        return h

def guided(net, x, t, c, w):
    """(1 + w) out(x, t, c) - w out(x, t, none) (Ho & Salimans 2022, Eq. 6) in one batched call:
    w = 0 is the conditional network, w = -1 the unconditional one. Eq. 6 combines eps; the same
    weights on x0 or v outputs give the same guided x0 and eps, as x0 and eps are affine functions
    of each kind of output (DDPM Eq. 4; v's definition) and the weights 1 + w and -w sum to 1."""
    none = torch.full_like(c, net.num_classes)
    out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, none])).float()  # fp32 sums
    out_c, out_none = out.chunk(2)
    return (1 + w) * out_c - w * out_none

# --- Speed-ups: nn.GroupNorm, nn.Upsample and the identity, written so that the compiled
# channels_last network runs faster (each one's A/B figure: README, Results) -----------------------

class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm from per-channel statistics (a group's mean and variance by the law of total
    variance), so that a channels_last x is never regrouped into an NCHW copy; fp32 like it under
    autocast. Pays in sampling, where the compiled forward is all there is."""

    def forward(self, x):
        N, C, G = x.shape[0], x.shape[1], self.num_groups
        x = x.float()
        var_c, mean_c = torch.var_mean(x, dim=(2, 3), correction=0)  # [N, C]
        mean_c, var_c = mean_c.view(N, G, -1), var_c.view(N, G, -1)
        mean = mean_c.mean(-1, keepdim=True)  # [N, G, 1]
        var = (var_c + (mean_c - mean) ** 2).mean(-1, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.float().view(G, -1)  # [N, G, C/G]
        shift = self.bias.float().view(G, -1) - mean * scale
        return x * scale.view(N, C, 1, 1) + shift.view(N, C, 1, 1)

class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling as a broadcast copy in channels_last order: its gradient is
    a sum over 2x2 blocks, which compiles to a plain reduction, where nn.Upsample's backward
    compiles to a scatter with atomic adds into an NCHW tensor."""

    def forward(self, x):
        B, C, H, W = x.shape
        x = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(B, H, 2, W, 2, C)
        return x.reshape(B, 2 * H, 2 * W, C).permute(0, 3, 1, 2)

class DenseGrad(torch.autograd.Function):
    """The identity, whose backward makes its gradient dense in x's layout: the decoder's input is
    a channel slice of a concatenation's gradient, strided in channels_last memory, which cuDNN's
    backward would copy in a slow kernel for each convolution reading it."""

    @staticmethod
    def forward(ctx, x):
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous(memory_format=torch.channels_last if ctx.channels_last
                            else torch.contiguous_format)
