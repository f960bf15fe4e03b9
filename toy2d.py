"""DDPM and DDIM on 2D point clouds, checked against exact answers.

Papers: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020, arXiv 2006.11239v2) and
Denoising Diffusion Implicit Models (Song, Meng, Ermon 2021, arXiv 2010.02502v4); annealed Langevin
dynamics from Generative Modeling by Estimating Gradients of the Data Distribution (Song & Ermon
2019, arXiv 1907.05600). Trains an MLP noise predictor on a 2D data set in minutes on a CPU,
samples with DDPM, DDIM or Langevin, and scores the samples against fresh data; on the Gaussian
mixture the exact noise predictor is known in closed form and serves as the oracle.

    python toy2d.py --data swiss_roll                # train, DDPM-1000, DDIM-50 eta sweep, metrics
    python toy2d.py --data mixture --oracle          # sample with the exact noise predictor
    python toy2d.py --data moons --sampler langevin --save-samples moons.npy
    python toy2d.py --help                           # every flag

Notation (code -> paper). Code t in {0, ..., T-1} is the paper's t+1 (t=0 is one step of noise):
    betas[t] -> beta_{t+1}            alphas_cumprod[t] -> abar_{t+1} (DDIM writes alpha_t)
    alphas_cumprod_prev[t] -> abar_t  (1 at t=0; a DDIM t_prev of -1 reads it, so abar_prev = 1)
    eps_fn(x, t) -> eps_theta(x_t, t) x0_pred -> f_theta(x_t) (DDIM Eq. 9)   sigma_t -> DDIM Eq. 16
"""
import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

DATASETS = ("swiss_roll", "moons", "gaussians8", "checkerboard", "circles", "mixture")
SAMPLERS = ("all", "ddpm", "ddim", "langevin")


def arg(default, help):
    """A config field whose help text becomes its --help line."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    data: str = arg("swiss_roll", f"data set: {' | '.join(DATASETS)}")
    steps: int = arg(12_000, "training steps (about 100 s on 2 CPU cores)")
    batch: int = arg(512, "training batch size")
    lr: float = arg(2e-3, "AdamW learning rate, cosine-decayed to 0 (sharpens thin manifolds)")
    hidden: int = arg(128, "MLP width")
    blocks: int = arg(3, "residual blocks in the MLP")
    T: int = arg(1000, "diffusion steps T (DDPM Sec. 4)")
    schedule: str = arg("linear", "noise schedule: linear (DDPM) | cosine (Nichol & Dhariwal)")
    sampler: str = arg("all", "ddpm | ddim | langevin | all (DDPM, then DDIM for each eta)")
    ddim_steps: int = arg(50, "DDIM sampling steps S")
    etas: str = arg("0,0.5,1", "DDIM eta values in [0, 1], comma separated (DDIM Eq. 16)")
    langevin_levels: int = arg(100, "annealed Langevin noise levels L (Song & Ermon Alg. 1)")
    langevin_steps: int = arg(10, "Langevin steps per noise level")
    langevin_step: float = arg(0.5, "Langevin step alpha_i / sigma_i^2 (Alg. 1: eps / sigma_L^2)")
    n_samples: int = arg(2048, "samples per sampler and reference points (KAIST grades 2048)")
    oracle: bool = arg(False, "mixture only: sample with the exact noise predictor, no training")
    save_samples: str = arg("", "write the first sampler's samples to this .npy file")
    out: str = arg("samples", "folder for the pictures")
    seed: int = arg(0, "random seed; metrics use fresh data drawn with seed+1 and seed+2")


# ---------------------------------------------------------------------------------------- data
# Gaussian mixture with known weights, means and covariances: the oracle's ground truth.
MIX_W = np.array([0.5, 0.3, 0.2])
MIX_MU = np.array([[-2.5, -1.5], [2.5, -1.5], [0.0, 2.5]])
MIX_COV = np.array([[[0.30, 0.20], [0.20, 0.30]], [[0.20, -0.10], [-0.10, 0.40]],
                    [[0.60, 0.00], [0.00, 0.05]]])


def swiss_roll_params(n, rng):
    """(t, h) uniform on the 8 outer cells of the 3x3 grid over [1.5 pi, 4.5 pi] x [0, 21]."""
    cell = rng.integers(0, 8, n)
    cell = cell + (cell >= 4)                        # skip cell 4, the middle one: the hole
    t = np.pi * (1.5 + cell // 3 + rng.random(n))   # columns pi wide
    h = 7.0 * (cell % 3 + rng.random(n))            # rows 7 high
    return t, h


def swiss_roll_moments():
    """Scalar mean and std of the coordinates of (t cos t, t sin t), integrated in closed form."""
    a, b = np.pi * np.array([1.5, 2.5, 3.5]), np.pi * np.array([2.5, 3.5, 4.5])   # the columns
    w = np.array([3, 2, 3]) / 8 / np.pi              # density of t: the middle column lost a cell
    int_cos = lambda t: t * np.sin(t) + np.cos(t)    # antiderivative of t cos t
    int_sin = lambda t: np.sin(t) - t * np.cos(t)    # antiderivative of t sin t
    mean = (w * (int_cos(b) - int_cos(a) + int_sin(b) - int_sin(a))).sum() / 2
    mean_sq = (w * (b**3 - a**3) / 3).sum() / 2      # E[x^2 + y^2] / 2 = E[t^2] / 2
    return mean, math.sqrt(mean_sq - mean**2)


def make_data(name, n, rng):
    """n points of a 2D data set, float32 [n, 2]."""
    if name == "swiss_roll":
        t, _ = swiss_roll_params(n, rng)             # the height h is dropped: 2D keeps t only
        mean, std = swiss_roll_moments()             # KAIST's per-sample statistics as n -> inf,
        x = (np.stack([t * np.cos(t), t * np.sin(t)], 1) - mean) / std * 2   # same for any draw
    elif name == "moons":
        a, lower = np.pi * rng.random(n), rng.random(n) < 0.5
        x = np.stack([np.where(lower, 1 - np.cos(a), np.cos(a)),
                      np.where(lower, 0.5 - np.sin(a), np.sin(a))], 1)
        x = (x - [0.5, 0.25]) * 2 + 0.04 * rng.standard_normal((n, 2))
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
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------- model
def timestep_embedding(t, dim):
    """Sinusoidal embedding of the step index, [B] -> [B, dim] (DDPM Sec. 4, as the Transformer)."""
    freqs = torch.exp(-math.log(10_000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class MLP(nn.Module):
    """Noise predictor eps_theta(x_t, t): [B, 2], [B] -> [B, 2]. Pre-norm residual blocks
    h <- h + W2 silu(W1 LayerNorm(h) + We emb(t)); the time embedding enters every block."""

    def __init__(self, hidden, blocks):
        super().__init__()
        self.hidden, self.inp = hidden, nn.Linear(2, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.blocks = nn.ModuleList(nn.ModuleList([nn.LayerNorm(hidden)] + [
            nn.Linear(hidden, hidden) for _ in range(3)]) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, t):
        emb, h = self.time(timestep_embedding(t, self.hidden)), self.inp(x)
        for norm, w1, w2, we in self.blocks:
            h = h + w2(F.silu(w1(norm(h)) + we(emb)))
        return self.out(h)


# ------------------------------------------------------------------------- the math of diffusion
def make_schedule(T, kind, device="cpu", dtype=torch.float32):
    """Tables in float64, cast once; linear (DDPM Sec. 4) or cosine (Nichol & Dhariwal Eq. 17)."""
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    else:
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    abar = np.cumprod(1 - betas)
    tables = dict(betas=betas, alphas=1 - betas, alphas_cumprod=abar,
                  alphas_cumprod_prev=np.append(1.0, abar[:-1]))
    return {k: torch.tensor(v, dtype=dtype, device=device) for k, v in tables.items()}


def coef(sched, name, t):
    """Table entry at t (an int or a [B] tensor) as [B, 1] or [1, 1], broadcasting over (x, y)."""
    return sched[name][t].reshape(-1, 1)


def noise_like(x, gen):
    """z ~ N(0, I) shaped like x, drawn from the sampler's own generator."""
    return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def q_sample(x0, t, eps, sched):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM Eq. 4)."""
    abar = coef(sched, "alphas_cumprod", t)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def posterior(x0, x_t, t, sched):
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM Eqs. 6-7)."""
    beta, alpha = coef(sched, "betas", t), coef(sched, "alphas", t)
    abar, abar_prev = coef(sched, "alphas_cumprod", t), coef(sched, "alphas_cumprod_prev", t)
    mean = (abar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - abar_prev) * x_t) / (1 - abar)
    return mean, (1 - abar_prev) / (1 - abar) * beta


def p_sample(eps_fn, x_t, t, sched, gen):
    """One DDPM step x_t -> x_{t-1} with sigma_t^2 = beta~_t (DDPM Alg. 2, Eq. 11 via Eq. 7)."""
    abar = coef(sched, "alphas_cumprod", t)
    x0_pred = (x_t - (1 - abar).sqrt() * eps_fn(x_t, t)) / abar.sqrt()   # Eq. 4 solved for x0
    mean, var = posterior(x0_pred, x_t, t, sched)                        # var = 0 at t = 0
    return mean + var.sqrt() * noise_like(x_t, gen)


def ddim_timesteps(T, S):
    """The (t, t_prev) pairs of an S-step DDIM run: T-1 down to t_prev = -1, no duplicates."""
    ts = np.linspace(T - 1, 0, S).round().astype(int).tolist()   # spacing >= 1: all distinct
    return list(zip(ts, ts[1:] + [-1]))


def ddim_step(eps_fn, x_t, t, t_prev, eta, sched, gen):
    """x_t -> x_{t_prev} (DDIM Eq. 12, sigma from Eq. 16); eta = 0 is the deterministic DDIM."""
    abar = coef(sched, "alphas_cumprod", t)
    abar_prev = coef(sched, "alphas_cumprod_prev", t_prev + 1)   # abar at t_prev; 1 at t_prev = -1
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


def mixture_log_prob(x, abar):
    """log q_t(x) of the mixture, [n]; abar = 1 gives the data density q_0."""
    return torch.logsumexp(mixture_terms(x, abar)[0], 1)


def oracle_eps(x, t, sched):
    """The exact noise predictor eps*(x_t, t) = -sqrt(1 - abar_t) grad log q_t(x_t) (Tweedie),
    grad log q_t = -sum_k r_k(x) C_k^-1 (x - sqrt(abar) mu_k), r_k the responsibilities."""
    abar = sched["alphas_cumprod"][t].item()
    log_wn, c_inv_d = mixture_terms(x.cpu(), abar)              # float64: on the CPU (MPS has none)
    score = -(log_wn.softmax(1)[..., None] * c_inv_d).sum(1)
    return (-math.sqrt(1 - abar) * score).to(x.device, x.dtype)


def chamfer(a, b):
    """KAIST's Chamfer distance: sum over both directions of squared nearest-neighbour distances."""
    d2 = torch.cdist(a.double(), b.double()) ** 2
    return (d2.min(1).values.sum() + d2.min(0).values.sum()).item()


def mmd2(a, b, h=0.5):
    """Unbiased MMD^2 with the RBF kernel k(x, y) = exp(-|x - y|^2 / 2h^2) (Gretton et al. 2012)."""
    k = lambda u, v: torch.exp(-torch.cdist(u.double(), v.double()) ** 2 / (2 * h * h))
    n, m = len(a), len(b)
    return ((k(a, a).sum() - n) / (n * (n - 1)) + (k(b, b).sum() - m) / (m * (m - 1))
            - 2 * k(a, b).mean()).item()


# --------------------------------------------------------------------------------------- train
def train(cfg, data, sched, device):
    """Minimise |eps - eps_theta(x_t, t)|^2 with t uniform (DDPM Alg. 1, Eq. 14)."""
    model = MLP(cfg.hidden, cfg.blocks).to(device)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=cuda)
    lr_at = lambda step: 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    autocast = torch.autocast("cuda", torch.bfloat16) if cuda else nullcontext()
    data, start = data.to(device), time.time()
    for step in range(1, cfg.steps + 1):
        x0 = data[torch.randint(len(data), (cfg.batch,), device=device)]
        t = torch.randint(cfg.T, (cfg.batch,), device=device)
        eps = torch.randn_like(x0)
        with autocast:
            loss = F.mse_loss(model(q_sample(x0, t, eps, sched), t).float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if step % 200 == 0 or step == cfg.steps:     # .item() syncs: only at logging steps
            rate = step / (time.time() - start)
            print(f"\rstep {step}/{cfg.steps}  loss {loss.item():.4f}  {rate:.0f} steps/s  "
                  f"ETA {(cfg.steps - step) / rate:.0f} s ", end="", flush=True)
    print(f"\ntrained in {time.time() - start:.1f} s")
    return model.eval()


# -------------------------------------------------------------------------------------- sample
@torch.no_grad()
def sample(eps_fn, sched, cfg, sampler, eta, gen, device):
    """n samples and the trajectory [(label, x)] of DDPM, DDIM or annealed Langevin."""
    x = torch.randn(cfg.n_samples, 2, generator=gen, device=device)
    frames = [(f"t = {cfg.T}", x)]
    if sampler == "ddpm":
        for t in range(cfg.T - 1, -1, -1):
            x = p_sample(eps_fn, x, t, sched, gen)
            frames.append((f"t = {t}", x))
    elif sampler == "ddim":
        for t, t_prev in ddim_timesteps(cfg.T, cfg.ddim_steps):
            x = ddim_step(eps_fn, x, t, t_prev, eta, sched, gen)
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


RED = (200, 30, 30)


def draw_panel(title, lim, points=(), arrows=(), size=300):
    """A Pillow scatter plot on [-lim, lim]^2: points [(xy, rgb)], arrows [(xy, dxy, rgb)]."""
    img = Image.new("P", (size, size + 18), (255, 255, 255))   # exact colours, small files
    draw = ImageDraw.Draw(img)
    px = lambda v: (np.asarray(v) + lim) / (2 * lim) * (size - 1)
    for g in range(-int(lim), int(lim) + 1):             # light grid at the integers
        draw.line([(px(g), 18), (px(g), size + 17)], fill=(230, 230, 230))
        draw.line([(0, size + 17 - px(g)), (size, size + 17 - px(g))], fill=(230, 230, 230))
    draw.rectangle([0, 18, size - 1, size + 17], outline="black")
    draw.text((5, 3), title, fill="black")
    for xy, rgb in points:
        for u, v in zip(px(xy[:, 0]), size + 17 - px(xy[:, 1])):
            draw.rectangle([u - 1, v - 1, u, v], fill=rgb)
    for xy, dxy, rgb in arrows:
        for (u, v), (du, dv) in zip(px(xy), px(xy + dxy) - px(xy)):
            draw.line([(u, size + 17 - v), (u + du, size + 17 - v - dv)], fill=rgb)
            draw.rectangle([u - 1, size + 16 - v, u, size + 17 - v], fill=rgb)
    return img


def save_row(panels, path):
    """Panels side by side, saved as one PNG."""
    row = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    for i, p in enumerate(panels):
        row.paste(p, (i * p.width, 0))
    row.quantize(16).save(path, optimize=True)
    print(f"wrote {path}")


def save_gif(frames, name, lim, path):
    """The denoising trajectory, 40 frames, denser towards the end where the shape appears."""
    picks = np.unique(np.round((1 - np.linspace(1, 0, 40) ** 2) * (len(frames) - 1))).astype(int)
    gif = [draw_panel(f"{name}  {frames[j][0]}", lim, [(frames[j][1].cpu().numpy(), RED)])
           for j in picks]
    gif[0].save(path, save_all=True, append_images=gif[1:], loop=0, optimize=True,
                duration=[120] * (len(gif) - 1) + [1500])
    print(f"wrote {path}")


def save_noise_field(eps_fn, sched, ref, lim, path):
    """Learned (red) against exact (black) eps on a grid, over the data (grey), at three t."""
    g = torch.linspace(-0.9 * lim, 0.9 * lim, 15)
    grid, cell, panels = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2), \
        g[1] - g[0], []
    for t in (20, 100, 400):
        exact = oracle_eps(grid, t, sched)
        learned = eps_fn(grid.to(sched["betas"].device), t).detach().float().cpu()
        scale = 0.6 * cell / exact.norm(dim=1).median()           # a typical arrow: 0.6 cell,
        arrow = lambda e: (e * scale * (1.2 * cell / (e * scale).norm(dim=1, keepdim=True))
                           .clamp(max=1)).numpy()                 # the longest cut at 1.2
        panels.append(draw_panel(f"eps at t = {t}: learned red, exact black", lim,
                                 [(ref.numpy(), (190, 190, 190))],
                                 [(grid.numpy(), arrow(exact), (0, 0, 0)),
                                  (grid.numpy(), arrow(learned), RED)]))
    save_row(panels, path)


def check_config(cfg):
    """Impossible values end the run with one clear line; returns the list of etas."""
    bad = lambda what, fix: sys.exit(f"toy2d.py: {what} -- {fix}")
    for flag, choices in (("data", DATASETS), ("schedule", ("linear", "cosine")),
                          ("sampler", SAMPLERS)):
        if getattr(cfg, flag) not in choices:
            bad(f"unknown --{flag} {getattr(cfg, flag)!r}", f"choose one of: {', '.join(choices)}")
    if cfg.oracle and cfg.data != "mixture":
        bad("--oracle needs the exact noise predictor, known only for the Gaussian mixture",
            "add --data mixture or drop --oracle")
    for name in ("steps", "batch", "hidden", "blocks", "T", "ddim_steps", "langevin_levels",
                 "langevin_steps", "n_samples", "lr", "langevin_step"):
        low = 1 if name == "n_samples" else 0                 # the MMD needs two points
        if not getattr(cfg, name) > low:
            bad(f"--{name.replace('_', '-')} is {getattr(cfg, name)}", f"give a value above {low}")
    if max(cfg.ddim_steps, cfg.langevin_levels) > cfg.T:
        bad("--ddim-steps and --langevin-levels cannot exceed --T", f"use at most {cfg.T}")
    try:
        etas = [float(e) for e in cfg.etas.split(",")]
    except ValueError:
        bad(f"--etas {cfg.etas!r} is not a list of numbers", "write e.g. --etas 0,0.5,1")
    if not all(0 <= e <= 1 for e in etas):
        bad(f"--etas {cfg.etas} has a value outside [0, 1]", "DDIM's eta lies in [0, 1]")
    return etas


def parse_config(argv=None):
    """argparse flags generated from Config, so --help and the config never disagree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(Config):
        kind = argparse.BooleanOptionalAction if f.type in (bool, "bool") else None
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, help=f.metadata[
            "help"], **({"action": kind} if kind else {"type": type(f.default)}))
    return Config(**vars(parser.parse_args(argv)))


def writable_or_fail(out):
    """Make the output folder and try writing there: a folder that cannot be written stops the
    run now, with one line, and not after the training."""
    try:
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, ".write_test"), "wb").close()
        os.remove(os.path.join(out, ".write_test"))
    except OSError as e:
        sys.exit(f"toy2d.py: cannot write {e.filename} ({e.strerror}) -- pass a writable --out")


def main(cfg, etas):
    device = torch.device("cuda" if torch.cuda.is_available() else
                          "mps" if torch.backends.mps.is_available() else "cpu")
    print(f"toy2d.py on {device}: {asdict(cfg)}")
    writable_or_fail(cfg.out)
    torch.manual_seed(cfg.seed)
    fresh = lambda k, n: torch.tensor(make_data(cfg.data, n, np.random.default_rng(cfg.seed + k)))
    ref, other = fresh(1, cfg.n_samples), fresh(2, cfg.n_samples)   # unseen data for the metrics
    sched = make_schedule(cfg.T, cfg.schedule, device)
    if cfg.oracle:
        eps_fn = lambda x, t: oracle_eps(x, t, sched)
    else:
        model = train(cfg, fresh(0, 100_000), sched, device)
        eps_fn = lambda x, t: model(x, torch.full((len(x),), t, device=device))
    ddpm, ddim = [(f"ddpm{cfg.T}", "ddpm", 1.0)], [(f"ddim{cfg.ddim_steps}_eta{e:g}", "ddim", e)
                                                   for e in etas]
    runs = {"ddpm": ddpm, "ddim": ddim, "all": ddpm + ddim, "langevin": [(
        f"langevin{cfg.langevin_levels}x{cfg.langevin_steps}", "langevin", 0.0)]}[cfg.sampler]
    prefix = f"{cfg.out}/toy2d_{cfg.data}{'_oracle' if cfg.oracle else ''}"
    lim, rows = 1.15 * float(ref.abs().max()), [("fresh data", other)]   # the metrics' floor
    for name, sampler, eta in runs:
        start, gen = time.time(), torch.Generator(device).manual_seed(cfg.seed)
        x, frames = sample(eps_fn, sched, cfg, sampler, eta, gen, device)
        x = x.float().cpu()
        print(f"{name}: sampled in {time.time() - start:.1f} s")
        save_row([draw_panel("fresh data", lim, [(ref.numpy(), (40, 40, 40))]), draw_panel(
            f"{name}  Chamfer {chamfer(x, ref):.1f}", lim, [(x.numpy(), RED)])],
            f"{prefix}_{name}.png")
        if len(rows) == 1:   # the first sampler: trajectory and --save-samples
            save_gif(frames, name, lim, f"{prefix}_{name}.gif")
            if cfg.save_samples:
                np.save(cfg.save_samples, x.numpy())
                print(f"wrote {cfg.save_samples}")
        rows.append((name, x))
    if cfg.data == "mixture" and not cfg.oracle:
        save_noise_field(eps_fn, sched, ref, lim, f"{prefix}_noise_field.png")
    print(f"\nmetrics against {cfg.n_samples} fresh points (seed {cfg.seed + 1}); MMD^2 "
          f"(unbiased, can be < 0) with an RBF kernel of bandwidth h = 0.5")
    print(f"{'samples':<22}{'Chamfer (KAIST)':>16}{'MMD^2':>12}"
          + (f"{'mean log q0 +- s.e.':>24}" if cfg.data == "mixture" else ""))
    for name, x in rows:
        line = f"{name:<22}{chamfer(x, ref):>16.2f}{mmd2(x, ref):>12.2e}"
        if cfg.data == "mixture":
            lp = mixture_log_prob(x, 1.0)
            line += f"{lp.mean():>16.4f} +- {lp.std() / math.sqrt(len(lp)):.4f}"
        print(line)


if __name__ == "__main__":
    config = parse_config()
    main(config, check_config(config))
