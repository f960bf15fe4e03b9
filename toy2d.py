"""DDPM, DDIM and annealed Langevin on 2D point clouds, checked against exact answers.

Papers: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020, arXiv 2006.11239v2) and
Denoising Diffusion Implicit Models (Song, Meng, Ermon 2021, arXiv 2010.02502v4); annealed Langevin
dynamics from Generative Modeling by Estimating Gradients of the Data Distribution (Song & Ermon
2019, arXiv 1907.05600); Classifier-Free Diffusion Guidance (Ho & Salimans 2022, arXiv 2207.12598).
Trains an MLP noise predictor on 2D data in minutes on a CPU, samples by DDPM, DDIM or Langevin,
scores against fresh data; the Gaussian mixture's exact noise predictor is the oracle, and its
components are the classes. "KAIST": KAIST's CS492D grades 2D samples by this Chamfer distance.

    python toy2d.py --data swiss_roll                # train, DDPM-1000, DDIM-50 per eta, metrics
    python toy2d.py --data mixture --oracle          # sample with the exact noise predictor
    python toy2d.py --data moons --sampler langevin  # each run's samples also as .npy in out/
    python toy2d.py --data mixture --label 0 --guidance 0 1 3   # class 0 at guidance w = 0, 1, 3

Notation (code -> paper). Code t in {0, ..., T-1} is the paper's t+1 (t=0 is one step of noise):
    betas[t] -> beta_{t+1}            alphas_cumprod[t] -> abar_{t+1} (DDIM writes alpha_t)
    alphas_cumprod_prev[t] -> abar_t  (1 at t=0; a DDIM t_prev of -1 reads it, so abar_prev = 1)
    eps_fn(x, t) -> eps_theta(x_t, t) x0_pred -> f_theta(x_t) (DDIM Eq. 9)   sigma_t -> DDIM Eq. 16
    S DDIM steps: t_i = floor((T-1)(S-1-i)/(S-1) + 1/2), i = 0..S-1, as in ddpm.py and ddim.py
    c -> class c, a mixture component (c = K: no label)   w -> guidance weight (Ho & Salimans Eq. 6)
"""
import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------------------- config
DATASETS = ("swiss_roll", "moons", "gaussians8", "checkerboard", "circles", "mixture")
AT_LEAST_1, NOT_NEGATIVE = (lambda v: v >= 1, "at least 1"), (lambda v: v >= 0, "0 or more")
POSITIVE, W = (lambda v: v > 0, "positive"), (lambda v: -1 <= min(v) <= max(v) <= 100, "-1 to 100")
UNIT = (lambda v: 0 <= np.min(v) <= np.max(v) <= 1, "in [0, 1]")   # every value of a tuple
AT_LEAST_2 = (lambda v: v >= 2, "at least 2 (the unbiased MMD needs two points)")
EVEN = (lambda v: v >= 2 and v % 2 == 0, "even and at least 2 (half sines, half cosines)")
ABOVE_20 = (lambda v: v > 20, "above 20 (the linear schedule's last beta is 20/T)")
RED, GREY = (200, 30, 30), (190, 190, 190)

def arg(default, help, ok=None, choices=None):
    return field(default=default, metadata=dict(help=help, ok=ok, choices=choices))

@dataclass
class Config:
    data: str = arg("swiss_roll", "data set", choices=DATASETS)
    steps: int = arg(12_000, "training steps (about 100 s on 2 CPU cores)", AT_LEAST_1)
    batch: int = arg(512, "training batch size", AT_LEAST_1)
    lr: float = arg(2e-3, "AdamW LR, cosine-decayed to 0 (sharpens thin shapes)", POSITIVE)
    hidden: int = arg(128, "MLP width", EVEN)
    blocks: int = arg(3, "residual blocks in the MLP", AT_LEAST_1)
    T: int = arg(1000, "diffusion steps T (DDPM Sec. 4)", ABOVE_20)
    sampler: str = arg("all", "all: DDPM, DDIM", choices=("all", "ddpm", "ddim", "langevin"))
    ddim_steps: int = arg(50, "DDIM sampling steps S", AT_LEAST_1)
    etas: tuple = arg((0.0, 0.5, 1.0), "DDIM eta values, e.g. --etas 0 1 (DDIM Eq. 16)", UNIT)
    langevin_levels: int = arg(100, "Langevin noise levels L (Song & Ermon Alg. 1)", AT_LEAST_1)
    langevin_steps: int = arg(10, "Langevin steps per noise level", AT_LEAST_1)
    langevin_step: float = arg(0.5, "alpha_i / sigma_i^2 (Alg. 1: eps / sigma_L^2)", POSITIVE)
    n_samples: int = arg(2048, "samples per sampler and reference points (KAIST)", AT_LEAST_2)
    oracle: bool = arg(False, "mixture only: sample with the exact noise predictor, no training")
    label: int = arg(-1, "mixture only: component to draw, guided; trains with labels (-1: off)")
    guidance: tuple = arg((0.0, 1.0, 3.0), "weights w for --label (Ho & Salimans Eq. 6)", W)
    p_uncond: float = arg(0.1, "label dropout (Ho & Salimans)", (lambda v: 0 < v <= 1, "in (0, 1]"))
    out: str = arg("out", "folder for the pictures and the samples (.npy)")
    seed: int = arg(0, "random seed; the metrics' fresh data: seed+1, seed+2", NOT_NEGATIVE)

def fail(message):
    """Stop with one line on stderr naming the problem and the fix (exit status 1)."""
    sys.exit(f"toy2d.py: {message}")

# ----------------------------------------------------------------------------------------- data
# Gaussian mixture with known weights, means and covariances: the oracle's ground truth.
MIX_W = np.array([0.5, 0.3, 0.2])
MIX_MU = np.array([[-2.5, -1.5], [2.5, -1.5], [0.0, 2.5]])
MIX_COV = np.array([[[0.3, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.4]], [[0.6, 0], [0, 0.05]]])

def swiss_roll_moments():
    """Scalar mean and std of the coordinates of (t cos t, t sin t), integrated in closed form."""
    a, b = np.pi * np.array([1.5, 2.5, 3.5]), np.pi * np.array([2.5, 3.5, 4.5])   # the columns
    w = np.array([3, 2, 3]) / 8 / np.pi              # density of t: the middle column lost a cell
    G = lambda t: (t + 1) * np.sin(t) + (1 - t) * np.cos(t)   # antiderivative of t (cos t + sin t)
    mean = (w * (G(b) - G(a))).sum() / 2
    mean_sq = (w * (b**3 - a**3) / 3).sum() / 2      # E[x^2 + y^2] / 2 = E[t^2] / 2
    return mean, math.sqrt(mean_sq - mean**2)

def make_data(name, n, rng, labels=False):
    """n points of a 2D data set, float32 [n, 2]; labels=True (mixture): also their components."""
    if name == "swiss_roll":   # KAIST's: (t, h) on 8 cells of 3x3 over [1.5 pi, 4.5 pi] x [0, 21]
        cell = rng.integers(0, 8, n)                 # h (rows 7 high) is dropped: 2D keeps t,
        t = np.pi * (1.5 + (cell + (cell >= 4)) // 3 + rng.random(n))   # but cell 4 is the hole
        mean, std = swiss_roll_moments()             # KAIST's per-draw statistics as n -> inf,
        x = (np.stack([t * np.cos(t), t * np.sin(t)], 1) - mean) / std * 2   # same for any draw
    elif name == "moons":
        a, turn = np.pi * rng.random(n), np.where(rng.random(n) < 0.5, -1, 1)[:, None]
        arc = np.stack([np.cos(a), np.sin(a)], 1) - [0.5, 0.25]   # upper moon about the centre;
        x = 2 * turn * arc + 0.04 * rng.standard_normal((n, 2))     # the lower: turned 180 deg
    elif name == "gaussians8":
        a = 2 * np.pi * rng.integers(0, 8, n) / 8
        x = 3 * np.stack([np.cos(a), np.sin(a)], 1) + 0.15 * rng.standard_normal((n, 2))
    elif name == "checkerboard":                     # the 8 dark squares of a 4x4 board of side 2
        col, row = rng.integers(0, 4, n), 2 * rng.integers(0, 2, n)
        x = np.stack([col, row + col % 2], 1) * 2 - 4 + 2 * rng.random((n, 2))
    elif name == "circles":
        a, r = 2 * np.pi * rng.random(n), np.where(rng.random(n) < 0.5, 4.0, 2.0)
        x = r[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
    else:                                            # mixture: x = mu_k + chol(Sigma_k) z
        k = rng.choice(len(MIX_W), n, p=MIX_W)
        x = MIX_MU[k] + (np.linalg.cholesky(MIX_COV)[k] @ rng.standard_normal((n, 2, 1)))[..., 0]
    return (x.astype(np.float32), k) if labels else x.astype(np.float32)

# ---------------------------------------------------------------------------------------- model
class MLP(nn.Module):
    """Noise predictor eps_theta(x_t, t[, c]): [B, 2], [B] or int[, [B]] -> [B, 2]. Pre-norm
    residual blocks h <- h + W2 silu(W1 LayerNorm(h) + We emb(t)); emb(t) enters every block.
    classes K > 0 adds to it a label embedding, K + 1 rows (row K: none, also for c None)."""

    def __init__(self, hidden, blocks, classes=0):
        super().__init__()
        self.hidden, self.classes, self.inp = hidden, classes, nn.Linear(2, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.blocks = nn.ModuleList(nn.ModuleList([nn.LayerNorm(hidden)] + [
            nn.Linear(hidden, hidden) for _ in range(3)]) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.label = nn.Embedding(classes + 1, hidden) if classes else None   # K = 0: as before

    def forward(self, x, t, c=None):
        half = self.hidden // 2   # sinusoidal embedding of t (DDPM Sec. 4, as the Transformer)
        angles = torch.as_tensor(t).reshape(-1, 1) * 10_000 ** (-torch.arange(half) / half)
        emb, h = self.time(torch.cat([angles.sin(), angles.cos()], 1)), self.inp(x)
        if self.classes:
            emb = emb + self.label(torch.full((len(x),), self.classes) if c is None else c)
        for norm, w1, w2, we in self.blocks:
            h = h + w2(nn.functional.silu(w1(norm(h)) + we(emb)))
        return self.out(h)

# ------------------------------------------------------------------------ the math of diffusion
def make_schedule(T, dtype=torch.float32):
    """Linear betas, 1e-4 to 0.02 times 1000/T as in ddpm.py (DDPM Sec. 4); float64, cast once."""
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    tables = dict(betas=betas, alphas=1 - betas, alphas_cumprod=abar,
                  alphas_cumprod_prev=np.append(1.0, abar[:-1]))
    return {k: torch.tensor(v, dtype=dtype) for k, v in tables.items()}

def noise_like(x, gen):
    """z ~ N(0, I) shaped like x, drawn from the sampler's own generator."""
    return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

def q_sample(x0, t, eps, sched):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM Eq. 4)."""
    abar = sched["alphas_cumprod"][t, None]   # t an int or [B]: [1] or [B, 1], as x is [B, 2]
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

def denoising_loss(model, x0, sched, c=None, p_uncond=0.0):
    """|eps - eps_theta(x_t, t)|^2 with t ~ U{0, ..., T-1}, eps ~ N(0, I) (DDPM Alg. 1, Eq. 14).
    Labels c [B]: eps_theta(x_t, t, c), c set to K (none) w.p. p_uncond (Ho & Salimans Alg. 1)."""
    t, eps = torch.randint(len(sched["betas"]), (len(x0),), device=x0.device), torch.randn_like(x0)
    x_t = q_sample(x0, t, eps, sched)
    if c is not None:
        c = torch.where(torch.rand(len(c), device=c.device) < p_uncond, len(MIX_W), c)
    return ((eps - (model(x_t, t) if c is None else model(x_t, t, c))) ** 2).mean()

def posterior(x0, x_t, t, sched):
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM Eqs. 6-7)."""
    beta, alpha = sched["betas"][t, None], sched["alphas"][t, None]
    abar, abar_prev = sched["alphas_cumprod"][t, None], sched["alphas_cumprod_prev"][t, None]
    mean = (abar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - abar_prev) * x_t) / (1 - abar)
    return mean, (1 - abar_prev) / (1 - abar) * beta

def p_sample(eps_fn, x_t, t, sched, gen):
    """One DDPM step x_t -> x_{t-1} with sigma_t^2 = beta~_t (DDPM Alg. 2, Eq. 11 via Eq. 7)."""
    abar = sched["alphas_cumprod"][t, None]
    x0_pred = (x_t - (1 - abar).sqrt() * eps_fn(x_t, t)) / abar.sqrt()   # Eq. 4 solved for x0
    mean, var = posterior(x0_pred, x_t, t, sched)                        # var = 0 at t = 0
    return mean + var.sqrt() * noise_like(x_t, gen)

def ddim_timesteps(T, S):
    """(t, t_prev) pairs: the notation's t_i in exact integers, then -1 (DDIM Sec. 4.2)."""
    ts = [T - 1] + [((T - 1) * (S - 1 - i) * 2 + S - 1) // (2 * (S - 1)) for i in range(1, S)]
    return list(zip(ts, ts[1:] + [-1]))

def ddim_step(eps_fn, x_t, t, t_prev, eta, sched, gen):
    """x_t -> x_{t_prev} (DDIM Eq. 12, sigma from Eq. 16); eta = 0 is the deterministic DDIM."""
    abar = sched["alphas_cumprod"][t, None]
    abar_prev = sched["alphas_cumprod_prev"][t_prev + 1, None]   # abar at t_prev; 1 at t_prev = -1
    eps = eps_fn(x_t, t)
    x0_pred = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()                        # Eq. 9
    sigma_t = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()  # Eq. 16
    direction = (1 - abar_prev - sigma_t**2).clamp(min=0).sqrt() * eps             # to x_t
    return abar_prev.sqrt() * x0_pred + direction + sigma_t * noise_like(x_t, gen)

def mixture_terms(x, abar):
    """For q_t = sum_k w_k N(sqrt(abar) mu_k, C_k), C_k = abar Sigma_k + (1-abar) I (DDPM Eq. 4):
    log w_k N_k(x) [n, K] and C_k^-1 (x - sqrt(abar) mu_k) [n, K, 2], in float64."""
    f64 = dict(dtype=torch.float64, device=x.device)
    cov = abar * torch.tensor(MIX_COV, **f64) + (1 - abar) * torch.eye(2, **f64)   # [K, 2, 2]
    d = x.double()[:, None] - math.sqrt(abar) * torch.tensor(MIX_MU, **f64)         # [n, K, 2]
    c_inv_d = torch.einsum("kij,nkj->nki", torch.linalg.inv(cov), d)
    log_n = -0.5 * ((c_inv_d * d).sum(-1) + torch.logdet(cov)) - math.log(2 * math.pi)
    return torch.tensor(MIX_W, **f64).log() + log_n, c_inv_d

def oracle_eps(x, t, sched, c=None):
    """The exact noise predictor eps*(x_t, t) = -sqrt(1 - abar_t) grad log q_t(x_t) (Tweedie),
    grad log q_t = -sum_k r_k(x) C_k^-1 (x - sqrt(abar) mu_k), r_k the responsibilities. Labels
    c [n] (K: none) make it the exact conditional: x_t | k ~ N(sqrt(abar) mu_k, C_k) (DDPM Eq. 4),
    a Gaussian N(m, C) has the score -C^-1 (x - m), so r = one-hot(k) and the conditional
    eps*_k(x_t, t) = sqrt(1 - abar_t) C_k^-1 (x_t - sqrt(abar_t) mu_k)."""
    abar, K = sched["alphas_cumprod"][t].item(), len(MIX_W)
    log_wn, c_inv_d = mixture_terms(x, abar)
    r = log_wn.softmax(1)                                                  # [n, K]
    if c is not None:                                                      # a row c = K keeps r
        r = torch.where(c[:, None] == K, r, (c[:, None] == torch.arange(K)).to(r.dtype))
    return (math.sqrt(1 - abar) * (r[..., None] * c_inv_d).sum(1)).to(x.dtype)

def guided(eps_fn, x, t, c, w):
    """Classifier-free guidance (1 + w) eps(x_t, t, c) - w eps(x_t, t, none) (Ho & Salimans Eq. 6)
    in one batched call (t an int, none = K): w = 0 is the conditional eps, -1 the unconditional."""
    none = torch.full_like(c, len(MIX_W))
    eps_c, eps_none = eps_fn(torch.cat([x, x]), t, torch.cat([c, none])).chunk(2)
    return (1 + w) * eps_c - w * eps_none

def chamfer(a, b):
    """KAIST's Chamfer distance: sum over both directions of squared nearest-neighbour distances."""
    d2 = torch.cdist(a.double(), b.double()) ** 2
    return (d2.min(1).values.sum() + d2.min(0).values.sum()).item()

def mmd2(a, b, h=0.5):
    """Unbiased MMD^2 with the RBF kernel k(x, y) = exp(-|x - y|^2 / 2h^2) (Gretton et al. 2012)."""
    k = lambda u, v: torch.exp(-torch.cdist(u.double(), v.double()) ** 2 / (2 * h * h))
    within = lambda u: (k(u, u).sum() - len(u)) / (len(u) * (len(u) - 1))   # no k(x, x) = 1
    return (within(a) + within(b) - 2 * k(a, b).mean()).item()

# ---------------------------------------------------------------------------------------- train
def train(cfg, data, sched, c=None):
    """AdamW on the denoising loss, LR cosine-decayed to 0; a non-finite loss stops the run."""
    model = MLP(cfg.hidden, cfg.blocks, 0 if c is None else len(MIX_W))   # c [n]: data's labels
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)   # lr (1 + cos) / 2
    start = time.time()
    for step in range(1, cfg.steps + 1):
        i = torch.randint(len(data), (cfg.batch,))
        loss = denoising_loss(model, data[i], sched, c if c is None else c[i], cfg.p_uncond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if step == 1 or step % 200 == 0 or step == cfg.steps:
            if not math.isfinite(loss.item()):
                fail(f"the loss is {loss.item()} at step {step} -- lower --lr")
            print(f"\rstep {step}/{cfg.steps}  loss {loss.item():.4f}  {time.time() - start:.0f} s",
                  end="" if step < cfg.steps else "\n", flush=True)
    return model.eval()

# --------------------------------------------------------------------------------------- sample
@torch.no_grad()
def sample(eps_fn, sched, cfg, sampler, eta, gen):
    """n samples and the trajectory [(label, x)] of DDPM, DDIM or annealed Langevin."""
    x = torch.randn(cfg.n_samples, 2, generator=gen)
    frames = [(f"t = {cfg.T}", x)]
    if sampler != "langevin":                     # DDPM: every t, in DDIM's pairs (t, t - 1)
        for t, t_prev in ddim_timesteps(cfg.T, cfg.T if sampler == "ddpm" else cfg.ddim_steps):
            x = p_sample(eps_fn, x, t, sched, gen) if sampler == "ddpm" else \
                ddim_step(eps_fn, x, t, t_prev, eta, sched, gen)
            frames.append((f"t = {t_prev + 1}", x))
    else:   # Song & Ermon Alg. 1 in y = x_t / sqrt(abar) = x0 + sigma eps, sigma^2 = (1-abar)/abar
        abar = sched["alphas_cumprod"]
        levels = [t for t, _ in ddim_timesteps(cfg.T, cfg.langevin_levels)]
        x = x * ((1 - abar[levels[0]]) / abar[levels[0]]).sqrt()   # y ~ N(0, sigma_1^2 I)
        for t in levels:
            sigma = ((1 - abar[t]) / abar[t]).sqrt()
            alpha = cfg.langevin_step * sigma**2     # alpha_i = eps sigma_i^2 / sigma_L^2 (Alg. 1)
            for _ in range(cfg.langevin_steps):
                score = -eps_fn(abar[t].sqrt() * x, t) / sigma   # grad_y log q = -eps / sigma
                x = x + alpha / 2 * score + alpha.sqrt() * noise_like(x, gen)
            frames.append((f"sigma = {sigma:.3g}", x))
    return x, frames

def sample_guided(eps_fn, sched, cfg, runs, prefix, lim, ref):
    """Per sampler, class --label at each --guidance w side by side, and per w the share of samples
    whose Bayes class at t = 0, argmax_k w_k N(x; mu_k, Sigma_k), is --label, and their mean."""
    c, path = torch.full((cfg.n_samples,), cfg.label), f"{prefix}_label{cfg.label}"
    for name, sampler, eta in runs:
        xs, panels = [], []
        for w in cfg.guidance:
            gen = torch.Generator().manual_seed(cfg.seed)
            x = sample(lambda x, t: guided(eps_fn, x, t, c, w), sched, cfg, sampler, eta, gen)[0]
            if not torch.isfinite(x).all():
                fail(f"{name} w = {w:g}: the samples are not finite -- lower --guidance")
            share = (mixture_terms(x, 1.0)[0].argmax(1) == cfg.label).double().mean().item()
            title, xs = f"{name}  w = {w:g}: {share:.2%} class {cfg.label}", xs + [x.numpy()]
            print(f"{title}, mean {xs[-1].mean(0).round(3)}", flush=True)
            panels.append((title, [(ref.numpy(), 0, GREY), (xs[-1], 0, RED)]))
        np.save(f"{path}_{name}_guidance.npy", np.stack(xs))   # [len(guidance), n, 2]
        save(f"{path}_{name}_guidance.png", lim, panels)

def save(path, lim, panels, size=300):
    """Panels [(title, [(xy, dxy, rgb)])] on [-lim, lim]^2, dots and arrows: a PNG row or a GIF."""
    px = lambda xy: (np.asarray(xy) * [1, -1] + lim) / (2 * lim) * (size - 1) + [0, 18]   # y up
    images = [Image.new("P", (size, size + 18), (255, 255, 255)) for _ in panels]   # exact colours
    for img, (title, layers) in zip(images, panels):
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, 18, size - 1, size + 17], outline="black")
        draw.text((5, 3), title, fill="black")
        for xy, dxy, rgb in layers:
            for (u, v), end in zip(px(xy), px(xy + dxy)):
                draw.line([u, v, *end], fill=rgb)
                draw.rectangle([u - 1, v - 1, u, v], fill=rgb)
    if path.endswith(".gif"):
        images[0].save(path, save_all=True, append_images=images[1:], loop=0, optimize=True,
                       duration=[120] * (len(images) - 1) + [1500])
    else:
        row = np.hstack([np.asarray(img.convert("RGB")) for img in images])
        Image.fromarray(row).quantize(16).save(path, optimize=True)
    print(f"wrote {path}", flush=True)

def save_noise_field(eps_fn, sched, ref, lim, path):
    """Learned (red) against exact (black) eps on a 15 x 15 grid over the data (grey), 3 t's."""
    g, T = torch.linspace(-0.9 * lim, 0.9 * lim, 15), len(sched["betas"])
    grid, cell, panels = torch.cartesian_prod(g, g), g[1] - g[0], []
    for t in (T // 50, T // 10, 2 * T // 5):                     # 20, 100 and 400 of 1000
        exact, learned = oracle_eps(grid, t, sched), eps_fn(grid, t).detach()
        scale = 0.6 * cell / exact.norm(dim=1).median()   # a typical arrow 0.6 cell, none over 1.2
        arrows = lambda e, rgb: (grid.numpy(), (scale * e).renorm(2, 0, 1.2 * cell).numpy(), rgb)
        panels.append((f"eps at t = {t}: learned red, exact black", [(ref.numpy(), 0, GREY),
                       arrows(exact, (0, 0, 0)), arrows(learned, RED)]))
    save(path, lim, panels)

# --------------------------------------------------------------------------------- command line
def parse_config(argv=None):
    """argparse flags generated from Config, so --help and the config never disagree."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda message: fail(f"{message} -- see python toy2d.py --help")
    for f in fields(Config):
        kind = {bool: dict(action=argparse.BooleanOptionalAction),
                tuple: dict(type=float, nargs="+")}.get(  # a tuple of floats: --etas 0 0.5 1
            type(f.default), dict(type=type(f.default), choices=f.metadata["choices"]))
        p.add_argument(f"--{f.name.replace('_', '-')}", default=f.default,
                       help=f.metadata["help"], **kind)
    return Config(**vars(p.parse_args(argv)))

def check_config(cfg):
    """One clear line for the first impossible value, before any work is done."""
    for f in fields(cfg):
        v, ok, flag = getattr(cfg, f.name), f.metadata["ok"], f"--{f.name.replace('_', '-')}"
        if isinstance(v, (float, tuple, list)) and not np.isfinite(v).all():   # --etas 0 nan too
            fail(f"{flag} {v}: must be a finite number")
        if ok and not ok[0](v):
            fail(f"{flag} {v}: must be {ok[1]}")
    if cfg.oracle and cfg.data != "mixture":
        fail("--oracle needs --data mixture: the exact noise predictor is known for it only")
    if (cfg.label != -1 or tuple(cfg.guidance) != Config.guidance) and (   # the classes are the
            cfg.data != "mixture" or not 0 <= cfg.label < len(MIX_W)):      # mixture's components
        fail(f"--label {cfg.label} --data {cfg.data}: guidance draws one component of the mixture "
             f"-- pass --data mixture --label 0 to {len(MIX_W) - 1}")
    S = {"all": "ddim_steps", "ddim": "ddim_steps", "langevin": "langevin_levels"}.get(cfg.sampler)
    if S and getattr(cfg, S) > cfg.T:   # the sampler's S steps are S distinct ones of the T
        fail(f"--{S.replace('_', '-')} {getattr(cfg, S)}: must be at most --T {cfg.T}")
    return cfg

def main(cfg):
    try:   # an --out that cannot be written stops the run now, not after the training
        os.makedirs(cfg.out, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.out).close()
    except OSError as e:
        fail(f"cannot write into {cfg.out} ({e.strerror}) -- pass a writable --out")
    print(f"toy2d.py: {asdict(cfg)}", flush=True)
    torch.manual_seed(cfg.seed)
    fresh = lambda k, n: torch.tensor(make_data(cfg.data, n, np.random.default_rng(cfg.seed + k)))
    ref, other = fresh(1, cfg.n_samples), fresh(2, cfg.n_samples)   # unseen data for the metrics
    sched = make_schedule(cfg.T)
    data = make_data(cfg.data, 100_000, np.random.default_rng(cfg.seed), cfg.label >= 0)
    x0, labels = map(torch.tensor, data) if cfg.label >= 0 else (torch.tensor(data), None)
    eps_fn = (lambda x, t, c=None: oracle_eps(x, t, sched, c)) if cfg.oracle else \
        train(cfg, x0, sched, labels)          # the MLP: it takes an int t too (labels: guided)
    runs = {"ddpm": [(f"ddpm{cfg.T}", "ddpm", 1.0)], "langevin": [
        (f"langevin{cfg.langevin_levels}x{cfg.langevin_steps}", "langevin", 0.0)],
        "ddim": [(f"ddim{cfg.ddim_steps}_eta{e:g}", "ddim", e) for e in cfg.etas]}
    runs = runs["ddpm"] + runs["ddim"] if cfg.sampler == "all" else runs[cfg.sampler]
    prefix = os.path.join(cfg.out, f"toy2d_{cfg.data}{'_oracle' if cfg.oracle else ''}")
    lim, rows = 1.15 * float(ref.abs().max()), [("fresh data", other)]   # the metrics' floor
    if cfg.label >= 0:
        return sample_guided(eps_fn, sched, cfg, runs, prefix, lim, ref)
    for name, sampler, eta in runs:
        start, gen = time.time(), torch.Generator().manual_seed(cfg.seed)
        x, frames = sample(eps_fn, sched, cfg, sampler, eta, gen)
        if not torch.isfinite(x).all():
            fail(f"{name}: the samples are not finite -- lower "
                 f"{'--langevin-step' if sampler == 'langevin' else '--lr'}")
        np.save(f"{prefix}_{name}.npy", x.numpy())   # the samples themselves, [n, 2] float32
        print(f"{name}: sampled in {time.time() - start:.1f} s", flush=True)
        save(f"{prefix}_{name}.png", lim, [("fresh data", [(ref.numpy(), 0, (40, 40, 40))]),
             (f"{name}  Chamfer {chamfer(x, ref):.1f}", [(x.numpy(), 0, RED)])])
        if len(rows) == 1:   # the first sampler: its trajectory, denser where the shape appears
            picks = np.unique(np.round((1 - np.linspace(1, 0, 40) ** 2) * (len(frames) - 1)))
            save(f"{prefix}_{name}.gif", lim, [(f"{name}  {frames[j][0]}",
                 [(frames[j][1].numpy(), 0, RED)]) for j in picks.astype(int)])
        rows.append((name, x))
    if cfg.data == "mixture" and not cfg.oracle:
        save_noise_field(eps_fn, sched, ref, lim, f"{prefix}_noise_field.png")
    mix = cfg.data == "mixture"                  # whose exact log-density we know
    print(f"\n{'samples':<22}{'Chamfer':>9}{'MMD^2':>11}{'   mean log q0 +- s.e.' * mix}   against "
          f"{cfg.n_samples} fresh points; Chamfer as KAIST's, unbiased MMD^2, RBF h = 0.5")
    for name, x in rows:
        lp = torch.logsumexp(mixture_terms(x, 1.0)[0], 1)   # log q_0(x)
        print(f"{name:<22}{chamfer(x, ref):>9.2f}{mmd2(x, ref):>11.2e}"
              + f"{lp.mean():>12.4f} +- {lp.std() / math.sqrt(len(lp)):.4f}" * mix)

if __name__ == "__main__":
    config = check_config(parse_config())
    try:
        main(config)
    except KeyboardInterrupt:   # Ctrl-C: one line, no traceback
        print("\ntoy2d.py: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)
