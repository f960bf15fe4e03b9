"""Denoising Diffusion Implicit Models (Song, Meng, Ermon 2021, arXiv 2010.02502v4).

Samples from a ddpm.py checkpoint in 10-100 steps with the DDIM update (deterministic at eta = 0)
and runs that ODE backwards to turn images into noise. Imports only unet.py. Samples by class from
`ddpm.py --cond` checkpoints, guided (Ho & Salimans 2022, arXiv 2207.12598v1: CFG).

    python ddim.py --ckpt ddpm.pt --steps 50 [--n 5000]         # grid, GIF (and PNGs: FID) in out/
    python ddim.py --ckpt ddpm.pt --compare 10,20,50,100,1000   # a row per step count, same noise
    python ddim.py --ckpt ddpm.pt --invert DIR --steps 200 --no-bf16   # x_0 -> x_T -> x_0, PSNR
    python ddim.py --ckpt ddpm.pt --interp                      # slerp between two noises
    python ddim.py --ckpt ddpm.pt --guidance 2 [--label blue]   # CFG; --guidance-grid: class x w

Notation (code -> paper). Code t = 0..T-1 is the paper's t = 1..T (t = 0: one step of noise), as
in ddpm.py; t_prev = -1 means no noise at all: alphas_cumprod_prev = 1.
    alphas_cumprod[t]   abar_t in DDPM's notation, which DDIM writes alpha_t
    pairs               [(tau_S, tau_{S-1}), ..., (tau_1, -1)]: the sub-sequence tau of Sec. 4.2
    eta                 scales sigma_t (Eq. 16): 0 is DDIM, 1 DDPM's posterior std; see ddim_step
    c, w                class labels [B] in 0..K-1 (K: no label), guidance weight (CFG Eq. 6)
"""
import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from unet import UNet, guided

# --- Config: every field is a flag (--field-name); `ok` is the test a value must pass -------------
AT_LEAST_1, NOT_NEGATIVE = (lambda v: v >= 1, "at least 1"), (lambda v: v >= 0, "0 or more")
UNIT, SPACINGS = (lambda v: 0 <= v <= 1, "in [0, 1]"), ("uniform", "quadratic", "trailing")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # the files --invert reads in a folder

def arg(default, help, ok=None, choices=None):
    return field(default=default, metadata=dict(help=help, ok=ok, choices=choices))

@dataclass
class Config:
    ckpt: str = arg("ddpm.pt", "a checkpoint written by `python ddpm.py --train`")
    steps: int = arg(50, "steps S of the checkpoint's T (DDIM Table 1: 10 to 1000)", AT_LEAST_1)
    eta: float = arg(0.0, "sigma scale of Eq. 16: 0 deterministic DDIM, 1 DDPM-like", UNIT)
    spacing: str = arg("uniform", "which S of the T steps (see timestep_pairs)", None, SPACINGS)
    clip: bool = arg(True, "clip the predicted x_0 to the data range [-1, 1] and re-derive eps")
    n: int = arg(64, "images to sample or invert; over 64 also one PNG each (FID)", AT_LEAST_1)
    batch: int = arg(256, "sampling batch size; the images do not depend on it", AT_LEAST_1)
    seed: int = arg(0, "image k's noise comes from a generator keyed on (seed, k)", NOT_NEGATIVE)
    bf16: bool = arg(True, "bf16 autocast around the network on CUDA (--no-bf16: exacter --invert)")
    compile: bool = arg(True, "torch.compile the network on CUDA when --n spans several batches")
    out: str = arg("out", "folder for grids, GIFs and PNGs")
    compare: tuple = arg((), "S1,S2,..: one grid, a row per step count, all from the same noises")
    invert: str = arg("", "an image or a folder: x_0 -> x_T -> x_0 at eta 0, side by side, PSNR")
    interp: bool = arg(False, "8 images at eta 0 along a slerp between two starting noises")
    label: str = arg("", "one class (name, else index) for all, not drawn as in the data")
    guidance: float = arg(0.0, "CFG Eq. 6's w (0: none)", (lambda v: -1 <= v <= 100, "-1 to 100"))
    guidance_grid: bool = arg(False, "a row per class, columns w = 0, 1, 3 from the row's noise")

def fail(message):
    sys.exit(f"ddim.py: {message}")  # one line on stderr naming the problem and the fix; exit 1

def check_config(cfg):
    """One clear line for the first impossible value, before any work is done."""
    for f in fields(cfg):  # a float must be finite first: inf would pass v >= 0
        v, ok = getattr(cfg, f.name), f.metadata["ok"]
        bad = isinstance(v, float) and not math.isfinite(v)
        if bad or ok and not ok[0](v):
            fail(f"--{f.name.replace('_', '-')} {v}: must be {'a finite number' if bad else ok[1]}")
    if bool(cfg.compare) + bool(cfg.invert) + cfg.interp + cfg.guidance_grid > 1:
        fail("--compare, --invert, --interp, --guidance-grid are separate runs -- pass one of them")
    if (cfg.invert or cfg.guidance_grid) and (cfg.label or cfg.guidance):
        fail("--invert and --guidance-grid take no --label or --guidance -- drop them")
    try:  # an --out that cannot be written stops the run now, not after the sampling
        os.makedirs(cfg.out, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.out).close()
    except OSError as e:
        fail(f"--out {cfg.out}: cannot write there ({e.strerror}) -- pass a writable folder")

# --- Data: uint8 [N, H, W, 3] images; load_images is ddpm.py's load_folder (pinned by a test) -----
def load_images(path, size):
    """Readable images at path (file or folder): uint8 [N, size, size, 3], and how many were not."""
    images, skipped = [], 0
    for name in sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.lower().endswith(IMAGE_EXTS)) if os.path.isdir(path) else [path]:
        try:
            with Image.open(name) as im:
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: keep the top 8 bits
                    im = Image.fromarray((np.asarray(im) / 257).clip(0, 255).astype(np.uint8))
                im = im.convert("RGBA")  # transparency (RGBA, LA, P) is composited onto white
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), im)
                im = ImageOps.fit(im.convert("RGB"), (size, size), Image.LANCZOS)  # centre square
                images.append(np.asarray(im))
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped += 1
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), skipped

def to_uint8(x):  # float [-1, 1] [N, 3, H, W] -> uint8 [N, H, W, 3] on the CPU
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

def grid_image(x, cols=8, names=()):
    """uint8 [N, H, W, 3] -> one image of them in rows of cols, 2 px white gaps, names at left."""
    x = np.pad(x, ((0, -len(x) % cols), (2, 0), (2, 0), (0, 0)), constant_values=255)
    n, h, w, _ = x.shape  # blank cells fill the last row; a gap above and left of each
    x = x.reshape(n // cols, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(n // cols * h, -1, 3)
    left = 8 + 6 * max(map(len, names)) if names else 0  # the font: 6 x 12 px
    im = Image.fromarray(np.pad(x, ((0, 2), (left, 2), (0, 0)), constant_values=255))
    for r, name in enumerate(names):
        ImageDraw.Draw(im).text((4, r * h + h // 2 - 5), name, "black")
    return im

# --- Model: the EMA network of a ddpm.py checkpoint, rebuilt from its own config ------------------
def load_checkpoint(path, device="cpu"):
    """(EMA U-Net, alphas_cumprod [T], config and its "classes", step) of a ddpm.py checkpoint."""
    fix = "pass --ckpt, a checkpoint written by `python ddpm.py --train`"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, not a PyTorch file, or a pickle that runs code
        fail(f"cannot read {path} ({type(e).__name__}: {' '.join(str(e).split())[:60]}) -- {fix}")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "ddpm":
        fail(f"{path} is not a ddpm.py checkpoint -- {fix}")
    try:
        c = dict(ckpt["config"], classes=ckpt.get("classes") if ckpt["config"].get("cond") else {})
        net = UNet(**{k: c[k] for k in "ch ch_mult num_res_blocks attn_levels".split()},
                   num_classes=len(c["classes"]))
        net.load_state_dict(ckpt["ema"])
        abar = make_schedule(c["schedule"], int(c["T"]))["alphas_cumprod"].to(device)
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        fail(f"{path}: config and weights do not fit ({' '.join(str(e).split())[:80]}) -- {fix}")
    return net.to(device, memory_format=torch.channels_last).eval(), abar, c, ckpt.get("step", 0)

# --- The math of DDIM: schedules in float64, cast once to float32; x tensors are [B, ...] ---------
def make_schedule(name, T):
    """betas, alphas, alphas_cumprod as float32 tensors [T] (DDPM Sec. 4; IDDPM Eq. 17)."""
    if name == "linear":  # beta from 1e-4 to 0.02 (DDPM Sec. 4), scaled so any T keeps this shape
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    else:  # abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), beta <= 0.999 (IDDPM Eq. 17)
        s = 0.008
        f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    tables = dict(betas=betas, alphas=1 - betas, alphas_cumprod=np.cumprod(1 - betas))
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tables.items()}

def split_prediction(prediction, out, x_t, abar):
    """The network output as (x0, eps), whichever it predicts: the one place that converts."""
    if prediction == "eps":  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)  (Eq. 4 solved for x0)
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), out
    if prediction == "x0":
        return out, (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 and Eq. 4 solved for x0 and eps:
    return abar.sqrt() * x_t - (1 - abar).sqrt() * out, (1 - abar).sqrt() * x_t + abar.sqrt() * out

def timestep_pairs(T, S, spacing):
    """The S (t, t_prev) pairs that a sampler takes: t from T-1 down, t_prev the next t, then -1.
    i = 0..S-1, d = S-1. uniform: t_i = floor((T-1)(d-i)/d + 1/2), ddpm.py's list (DDIM App. D.2
    "linear", from T-1 as in IDDPM Sec. 4); quadratic: round((T-1)(1 - i/d)^2), denser near the
    data (DDIM App. D.2); trailing: round(T - iT/S) - 1, ending at T/S - 1 (arXiv 2305.08891)."""
    i, d = np.arange(S), max(S - 1, 1)
    t = {"uniform": ((T - 1) * (d - i) * 2 + d) // (2 * d),  # exact integers: ties round up
         "quadratic": np.round((T - 1) * (1 - i / d) ** 2),
         "trailing": np.round(T - i * T / S) - 1}[spacing].astype(int).tolist()
    for k in range(S - 2, -1, -1):  # quadratic rounds small t together when S nears T: lift each
        t[k] = max(t[k], t[k + 1] + 1)  # above the next (t_k + k <= T-1, so t_0 stays T-1)
    return list(zip(t, t[1:] + [-1]))

def ddim_step(x_t, out, abar_t, abar_prev, eta, prediction, clip, noise=None):
    """x_t -> (x_prev, x0_pred) (DDIM Eq. 12, sigma from Eq. 16).

    code        paper (DDIM)               code        paper (DDIM)
    x_t         x_t                        abar_t      alpha_t
    x_prev      x_{t-1}, or x_{tau_{i-1}}  abar_prev   alpha_{t-1} (1 for t_prev = -1)
    out         the network's output       x0_pred     f_theta^(t)(x_t) (Eq. 9)
    eps         eps_theta^(t)(x_t)         sigma_t     sigma_t(eta) (Eq. 16)
    noise       eps_t ~ N(0, I); None where sigma_t = 0.   fp32; abar_t, abar_prev: 0-dim tensors
    """
    # 1. Whatever the network predicts, read it as x0_pred and eps.
    x0_pred, eps = split_prediction(prediction, out, x_t, abar_t)
    # 2. Clip x0_pred to the data range and re-derive eps from it, so that x_t = sqrt(abar_t)
    #    x0_pred + sqrt(1 - abar_t) eps still holds: eta = 1 is then ddpm.py's clipped sampler.
    if clip:
        x0_pred = x0_pred.clamp(-1, 1)
        eps = (x_t - abar_t.sqrt() * x0_pred) / (1 - abar_t).sqrt()
    # 3. Eq. 16: sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev);
    #    0 outright at eta = 0, where the root would be NaN upwards (inversion: abar_prev < abar_t).
    sigma_t = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt() if eta else 0
    # 4. The "direction pointing to x_t", scaled so that x_prev keeps the variance 1 - abar_prev.
    dir_xt = (1 - abar_prev - sigma_t ** 2).sqrt() * eps
    # 5. Eq. 12: x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t z.
    x_prev = abar_prev.sqrt() * x0_pred + dir_xt
    return (x_prev if noise is None else x_prev + sigma_t * noise), x0_pred

def slerp(z0, z1, a):
    """Spherical interpolation of two noises (Shoemake 1985; DDIM Sec. 5.3): [len(a), *z0.shape]."""
    theta = torch.arccos((z0 * z1).sum() / (z0.norm() * z1.norm()))
    a = a.view(-1, *[1] * z0.dim())
    return (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta)

# --- Sampling: image k's noise comes from its own generator, whatever the --batch -----------------
@torch.no_grad()
def ddim_sample(net, alphas_cumprod, x, pairs, prediction, eta=0.0, clip=True, noise=None,
                bf16=True, record=None, tag="", c=None, w=0.0):
    """x_T [B, ...] -> x_0, one Eq. 12 update per (t, t_prev) pair and nothing else (Sec. 4.2).
    net(x_t, t [B]) returns the `prediction`, guided by w for labels c [B]; noise() draws N(0, I)
    like x where sigma_t > 0; record {step index: None} gets (x_t, x0_pred) of the first 16."""
    start = last = time.time()  # for progress lines led by tag; host time: never a GPU sync
    model = net if c is None else lambda x, t: guided(net, x, t, c, w)  # CFG Eq. 6, one call
    for i, (t, t_prev) in enumerate(pairs):
        abar_t = alphas_cumprod[t]
        abar_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(abar_t)
        with torch.autocast("cuda", torch.bfloat16, enabled=bf16 and x.is_cuda):  # network only
            out = model(x, torch.full((len(x),), t, device=x.device)).float()
        z = noise() if noise is not None and eta > 0 and t_prev >= 0 else None
        x_prev, x0_pred = ddim_step(x, out, abar_t, abar_prev, eta, prediction, clip, z)
        if i in (record or {}):
            record[i] = (x[:16].clone(), x0_pred[:16].clone())
        x = x_prev
        if (now := time.time()) - last >= 5:  # a batch can take minutes on a CPU: say how far
            print(f"{tag}step {i + 1}/{len(pairs)} ({now - start:.0f} s)", flush=True)
            last = now
    return x

def ddim_invert(net, alphas_cumprod, x0, pairs, prediction, bf16=True, tag=""):
    """x_0 -> x_T: Eq. 12 at eta = 0 up the reversed pairs, x_next = sqrt(abar_next) x0_pred +
    sqrt(1 - abar_next) eps, an Euler step of the ODE (Eq. 13) the other way (Sec. 5.4). No clip:
    it must stay invertible. The data stands in for x at t = 0, where the network was trained."""
    up = [(max(t, 0), t_next) for t_next, t in reversed(pairs)]
    return ddim_sample(net, alphas_cumprod, x0, up, prediction, clip=False, bf16=bf16, tag=tag)

def class_index(label, names):  # --label as an index into the class names: a name, else an index
    k = names.index(label) if label in names else int(label) if label.isdecimal() else len(names)
    return k if k < len(names) else fail(f"--label {label}: no such class -- pass one of "
                                         f"{', '.join(names)} (or an index, 0 to {len(names) - 1})")

def draw_labels(classes, cfg, first, count):
    """Labels [count] of images first..: k for grid row k, --label's, or drawn as in the data."""
    if cfg.guidance_grid or cfg.label:
        return (torch.arange(first, first + count) % len(classes) if cfg.guidance_grid
                else torch.full((count,), class_index(cfg.label, list(classes))))
    p = np.array(list(classes.values())) / sum(classes.values())  # the data's class frequencies
    return torch.tensor([np.random.default_rng([cfg.seed, k]).choice(len(p), p=p)  # keyed like x_T
                         for k in ([0] * count if cfg.interp else range(first, first + count))])

def sample_images(net, abar, c, cfg, first, count, record=None):
    """Images first .. first+count-1 [count, 3, H, W]; image k's noises from its own generator."""
    gens = [torch.Generator(abar.device).manual_seed((cfg.seed * 1_000_003 + k) % 2 ** 32)
            for k in range(first, first + count)]  # mod 2^32: a CPU generator keeps 32 bits
    shape = (3, c["image_size"], c["image_size"])
    noise = lambda: torch.stack([torch.randn(shape, generator=g, device=abar.device)  # noqa: E731
                                 for g in gens]).contiguous(memory_format=torch.channels_last)
    x = noise()
    if cfg.interp:  # from image 0's x_T to image 1's, sampled at eta = 0 (DDIM Sec. 5.3)
        x = slerp(x[0], x[1], torch.linspace(0, 1, count, device=abar.device))
    labels = draw_labels(c["classes"], cfg, first, count).to(abar.device) if c["classes"] else None
    pairs, eta = timestep_pairs(c["T"], cfg.steps, cfg.spacing), 0.0 if cfg.interp else cfg.eta
    return ddim_sample(net, abar, x, pairs, c["prediction"], eta, cfg.clip, noise, cfg.bf16,
                       record, f"images {first + 1}-{first + count}: ", labels, cfg.guidance)

# --- Command line: sample | --compare | --invert | --interp | --guidance-grid; Config as flags ---
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: sys.exit(f"ddim.py: {message} -- see python ddim.py --help")
    for f in fields(Config):
        int_tuple = lambda text: tuple(int(v) for v in text.split(",") if v.strip())  # noqa: E731
        kind = {bool: None, tuple: int_tuple}.get(type(f.default), type(f.default))
        extra = dict(action=argparse.BooleanOptionalAction) if kind is None else dict(type=kind)
        shown = "none" if f.default in ((), "") else f.default
        p.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, **extra,
                       choices=f.metadata["choices"], help=f"{f.metadata['help']} ({shown})")
    cfg = Config(**vars(p.parse_args(argv)))
    check_config(cfg)
    net, abar, c, step = load_checkpoint(cfg.ckpt, "cuda" if torch.cuda.is_available() else "cpu")
    if not (names := list(c["classes"])) and (cfg.label or cfg.guidance or cfg.guidance_grid):
        fail(f"--label/--guidance: {cfg.ckpt} has no classes -- pass one trained with --cond")
    label = f"_label-{names[class_index(cfg.label, names)]}" if cfg.label else ""
    cond = f"_w{cfg.guidance:g}{label}" if names else ""  # in every name: runs never overwrite
    if not 1 <= min(counts := cfg.compare or (cfg.steps,)) <= max(counts) <= len(abar):
        fail(f"--{'compare' if cfg.compare else 'steps'} {','.join(map(str, counts))}: {cfg.ckpt} "
             f"has T = {len(abar)} -- pass step counts from 1 to {len(abar)}")
    print(f"{cfg.ckpt}: step {step}, {c['schedule']} T = {len(abar)}, predicts {c['prediction']}, "
          f"{c['image_size']}px; on {abar.device}", flush=True)
    if cfg.compile and abar.is_cuda and cfg.n > cfg.batch and not cfg.invert:
        print("torch.compile: the first batch includes the compile", flush=True)
        net = torch.compile(net)  # over several batches, compiling pays for itself
    name = os.path.join(cfg.out, f"ddim_{Path(cfg.ckpt).stem}_step{step}_{cfg.spacing}")
    if cfg.compare:  # one grid, a row per step count, all from the same starting noises
        cols, counts = min(cfg.n, 8), [str(S) for S in cfg.compare]  # each row's count at its left
        rows = [sample_images(net, abar, c, replace(cfg, steps=S), 0, cols) for S in cfg.compare]
        im = grid_image(to_uint8(torch.cat(rows)), cols, counts)
        path = f"{name}_compare{'-'.join(counts)}_eta{cfg.eta:g}{cond}_seed{cfg.seed}.png"
    elif cfg.guidance_grid:  # row k: class k from image k's noise, guided by w = 0, 1, 3
        x = torch.stack([sample_images(net, abar, c, replace(cfg, guidance=w), 0, len(names))
                         for w in (0, 1, 3)], 1)  # [K, 3 columns, 3, H, W]
        im = grid_image(to_uint8(x.flatten(0, 1)), 3, names)
        path = f"{name}{cfg.steps}_classes_w0-1-3_eta{cfg.eta:g}_seed{cfg.seed}.png"
    elif cfg.interp:  # one strip of 8 images
        im = grid_image(to_uint8(sample_images(net, abar, c, cfg, 0, 8)))
        path = f"{name}{cfg.steps}_interp{cond}_seed{cfg.seed}.png"
    elif cfg.invert:  # x_0 -> x_T -> x_0 at eta = 0 for the first --n images, and the PSNR
        images, skipped = load_images(cfg.invert, c["image_size"])
        if len(images) == 0:
            fail(f"--invert {cfg.invert}: no readable images ({skipped} unreadable) -- pass a "
                 f"{'/'.join(e[1:] for e in IMAGE_EXTS)} image or a folder of them")
        x0 = torch.from_numpy(images[:cfg.n]).to(abar.device).permute(0, 3, 1, 2) / 127.5 - 1
        pairs, rec = timestep_pairs(c["T"], cfg.steps, cfg.spacing), []
        for x in x0.split(cfg.batch):  # the progress lines say which way
            x_T = ddim_invert(net, abar, x, pairs, c["prediction"], cfg.bf16, "x_0 -> x_T: ")
            rec.append(ddim_sample(net, abar, x_T, pairs, c["prediction"], clip=False,
                                   bf16=cfg.bf16, tag="x_T -> x_0: "))
        rec = torch.cat(rec).clamp(-1, 1)  # PSNR with the peak-to-peak range of [-1, 1], 2:
        psnr = 10 * torch.log10(2 ** 2 / (rec - x0).square().mean(dim=(1, 2, 3)).clamp(min=1e-12))
        print(f"reconstruction PSNR {psnr.mean():.2f} dB (worst {psnr.min():.2f}) over "
              f"{len(x0)} images, {cfg.steps} steps each way", flush=True)
        im = grid_image(to_uint8(torch.stack([x0[:32], rec[:32]], 1).flatten(0, 1)))
        path = f"{name}{cfg.steps}_invert_{Path(cfg.invert).stem}.png"  # input | reconstruction
    else:  # a grid of the first 64 images, the trajectory GIF, with --n > 64 one PNG each (FID)
        S, batch, t0, images = cfg.steps, min(cfg.batch, cfg.n), time.time(), []
        # GIF frames at these step indices: denser towards the end, where the details form
        record = dict.fromkeys(np.unique((S - np.geomspace(S, 1, 40)).round().astype(int)))
        for i in range(0, cfg.n, batch):  # the last batch is padded to a full one: no new shapes
            x = sample_images(net, abar, c, cfg, i, batch, None if i else record)
            images.append(to_uint8(x[:cfg.n - i]))
            print(f"sampled {min(i + batch, cfg.n)}/{cfg.n}, {time.time() - t0:.0f} s", flush=True)
        images, name = np.concatenate(images), f"{name}{S}_eta{cfg.eta:g}{cond}_seed{cfg.seed}"
        frames = [Image.fromarray(np.hstack([grid_image(to_uint8(x), 4) for x in pair])).quantize(
            method=Image.Quantize.FASTOCTREE) for pair in record.values()]  # x_t | x0; fast
        frames[0].save(f"{name}.gif", save_all=True, duration=80, loop=0,
                       append_images=frames[1:] + frames[-1:] * 12)  # hold the result a second
        for k, image in enumerate(images if cfg.n > 64 else []):  # for FID
            os.makedirs(f"{name}_n{cfg.n}", exist_ok=True)
            Image.fromarray(image).save(f"{name}_n{cfg.n}/{k:06d}.png")
        print(f"wrote {name}.gif" + (f" and {cfg.n} PNGs in {name}_n{cfg.n}" if cfg.n > 64 else ""))
        im, path = grid_image(images[:64]), f"{name}.png"
    im.save(path)
    print("wrote", path)

if __name__ == "__main__":
    main()
