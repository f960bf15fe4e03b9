"""Denoising Diffusion Implicit Models (Song, Meng, Ermon 2021, arXiv 2010.02502v4).

Samples from a ddpm.py checkpoint in 10-100 steps with the DDIM update (deterministic at eta = 0)
and runs that ODE backwards to turn images into noise. Rebuilds the U-Net and the noise schedule
from the checkpoint's own config; imports only unet.py.

    python ddim.py --ckpt ddpm.pt --steps 50                    # grid + trajectory GIF in out/
    python ddim.py --ckpt ddpm.pt --steps 50 --n 5000           # and 5000 single PNGs, for FID
    python ddim.py --ckpt ddpm.pt --compare 10,20,50,100,1000   # a row per step count, same noise
    python ddim.py --ckpt ddpm.pt --invert DIR --steps 200 --no-bf16   # x_0 -> x_T -> x_0, PSNR
    python ddim.py --ckpt ddpm.pt --interp                      # slerp between two noises
    python ddim.py --ckpt ddpm.pt --bench                       # images/s: eager fp32 vs optimised

Notation (code -> paper). Code t = 0..T-1 is the paper's t = 1..T (t = 0: one step of noise), as
in ddpm.py; t_prev = -1 means no noise at all: alphas_cumprod_prev = 1.
    alphas_cumprod[t]   abar_t in DDPM's notation, which DDIM writes alpha_t
    pairs               [(tau_S, tau_{S-1}), ..., (tau_1, -1)]: the sub-sequence tau of Sec. 4.2
    eta                 scales sigma_t (Eq. 16): 0 is DDIM, 1 DDPM's posterior std; see ddim_step
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from unet import UNet

# --------------------------------------------------------------------------------------------------
# Config: every field is a command-line flag (--field-name) with this help text.

SPACINGS = ("uniform", "quadratic", "trailing")
# torch.compile's modes ("reduce-overhead": CUDA graphs; "max-autotune": also times kernel choices)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune", "none")


def arg(default, help):
    """A config field whose help text becomes its --help line."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    steps: int = arg(50, "sampling steps S, 1 to the checkpoint's T (DDIM Table 1: 10 to 1000)")
    eta: float = arg(0.0, "sigma scale of Eq. 16, in [0, 1]: 0 deterministic DDIM, 1 DDPM-like")
    spacing: str = arg("uniform", "which S of the T steps: uniform | quadratic | trailing")
    clip: bool = arg(True, "clip the predicted x_0 to the data range [-1, 1] and re-derive eps")
    n: int = arg(64, "images to sample (or invert); more than 64 also writes single PNGs (FID)")
    batch: int = arg(256, "sampling batch size; the images do not depend on it")
    seed: int = arg(0, "image k's noise comes from a generator seeded with (seed, k)")
    frames: int = arg(8, "images in the --interp strip")
    bf16: bool = arg(True, "bf16 autocast around the network on CUDA (--no-bf16: exacter --invert)")
    compile_mode: str = arg("default", "torch.compile on CUDA, for --n > --batch and --bench: "
                            + " | ".join(COMPILE_MODES))
    out: str = arg("out", "folder for grids, GIFs and PNGs")


def fail(message):
    """Stop with one line on stderr naming the problem and the fix (exit status 1)."""
    sys.exit(f"ddim.py: {message}")


def writable_or_fail(out):
    """Make the output folder and try writing there: a folder that cannot be written stops the
    run now, with one line, and not after the sampling."""
    try:
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, ".write_test"), "wb").close()
        os.remove(os.path.join(out, ".write_test"))
    except OSError as e:
        fail(f"cannot write {e.filename} ({e.strerror}) -- pass a writable --out")


def check_config(cfg):
    """One clear line for each impossible value, before any work is done."""
    for bad, message in [
        (cfg.steps < 1, f"--steps {cfg.steps}: take at least 1 step"),
        (not 0 <= cfg.eta <= 1, f"--eta {cfg.eta}: use a value in [0, 1] (0: DDIM, 1: DDPM-like)"),
        (cfg.spacing not in SPACINGS, f"--spacing {cfg.spacing}: use " + " | ".join(SPACINGS)),
        (cfg.n < 1 or cfg.batch < 1, "--n and --batch must be at least 1"),
        (cfg.frames < 2, "--frames must be at least 2"),
        (not 0 <= cfg.seed < 2 ** 31, "--seed must be in [0, 2^31)"),
        (cfg.compile_mode not in COMPILE_MODES, "--compile-mode: use " + " | ".join(COMPILE_MODES)),
    ]:
        if bad:
            fail(message)


# --------------------------------------------------------------------------------------------------
# Data: float [-1, 1] [N, 3, H, W] <-> uint8 [N, H, W, 3]. Copies of ddpm.py's, pinned by a test.

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_images(path, size):
    """ddpm.py's load_folder that also takes a single image: uint8 [N, size, size, 3], center-
    cropped and resized with an antialiasing filter, and how many files could not be read."""
    names = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
        if f.lower().endswith(IMAGE_EXTS))
    images, skipped = [], 0
    for name in names:
        try:
            with Image.open(name) as im:
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: keep the top 8 bits
                    im = Image.fromarray((np.asarray(im) / 257).clip(0, 255).astype(np.uint8))
                im = im.convert("RGBA")  # transparency (RGBA, LA, P) is composited onto white
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), im)
                w, h, s = *im.size, min(im.size)
                box = ((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)
                images.append(np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS,
                                                                  box=box)))
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped += 1
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), skipped


def to_uint8(x):
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid_array(images, cols=8):
    """float [-1, 1] [N, 3, H, W] -> uint8 [rows*(H+2)+2, cols*(W+2)+2, 3], 2 px white gaps."""
    x = to_uint8(images)
    n, h, w, _ = x.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = x[k]
    return canvas


# --------------------------------------------------------------------------------------------------
# Model: the EMA network of a ddpm.py checkpoint, rebuilt from the checkpoint's own config.


def load_checkpoint(path):
    """(EMA U-Net on the CPU, the checkpoint's config dict, its step), or one clear line why not."""
    retrain = "pass a checkpoint written by `python ddpm.py --train`"
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path} -- train one with `python ddpm.py --train` or pass --ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{path} is not a readable checkpoint ({type(e).__name__}) -- it may be truncated or "
             f"not a PyTorch file; {retrain}")
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind != "ddpm":
        fail(f"{path} is {f'a {kind} checkpoint' if kind else 'no checkpoint of this repository'},"
             f" not a ddpm.py one -- {retrain}")
    c = ckpt.get("config")
    keys = ("image_size", "ch", "ch_mult", "num_res_blocks", "attn_levels", "dropout", "T")
    if (not isinstance(c, dict) or any(k not in c for k in keys)
            or c.get("schedule") not in ("linear", "cosine")
            or c.get("prediction") not in ("eps", "x0", "v")):
        fail(f"{path}: its config lacks the network, schedule or prediction -- retrain it")
    try:
        model = UNet(ch=c["ch"], ch_mult=tuple(c["ch_mult"]), num_res_blocks=c["num_res_blocks"],
                     attn_levels=tuple(c["attn_levels"]), dropout=c["dropout"])
        model.load_state_dict(ckpt["ema"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        fail(f"{path}: its EMA weights do not fit its config ({str(e).splitlines()[0][:100]}) -- "
             "retrain with ddpm.py")
    return model.eval().requires_grad_(False), c, ckpt.get("step", 0)


def compiled(net, mode):
    """torch.compile(net) in one of COMPILE_MODES; "none": net itself."""
    return net if mode == "none" else torch.compile(net, mode=None if mode == "default" else mode)


def predict(net, x, t, bf16):
    """net(x_t, t) for every image as fp32, with bf16 autocast around the network only on CUDA."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and x.is_cuda):
        return net(x, torch.full((x.shape[0],), t, device=x.device)).float()


# --------------------------------------------------------------------------------------------------
# The math of DDIM. Schedules in float64, cast once to float32; x tensors are [B, ...].


def make_schedule(name, T):
    """betas, alphas, alphas_cumprod as float32 tensors [T] (DDPM Sec. 4; IDDPM Eq. 17)."""
    if name == "linear":  # beta from 1e-4 to 0.02 (DDPM Sec. 4), scaled so any T keeps this shape
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    else:  # abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), beta <= 0.999 (IDDPM Eq. 17)
        s = 0.008
        f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    alphas = 1 - betas
    tables = dict(betas=betas, alphas=alphas, alphas_cumprod=np.cumprod(alphas))
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in tables.items()}


def split_prediction(prediction, out, x_t, abar):
    """The network output as (x0, eps), whichever it predicts: the one place that converts."""
    if prediction == "eps":  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)  (Eq. 4 solved for x0)
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), out
    if prediction == "x0":
        return out, (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
    # v = sqrt(abar) eps - sqrt(1-abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1-abar) v,
    #                                            eps = sqrt(1-abar) x_t + sqrt(abar) v
    return abar.sqrt() * x_t - (1 - abar).sqrt() * out, (1 - abar).sqrt() * x_t + abar.sqrt() * out


def timestep_pairs(T, S, spacing):
    """The S (t, t_prev) pairs that a sampler takes: t from T-1 down, t_prev the next t, then -1.

    uniform: T-1 to 0 evenly (DDIM App. D.2 "linear", anchored at T-1 as in IDDPM Sec. 4);
    quadratic: t ~ (T-1) (1 - i/(S-1))^2, denser near the data (DDIM App. D.2);
    trailing: round(T - i T/S) - 1, so the last t is T/S - 1 (Lin et al. 2023, arXiv 2305.08891).
    """
    i = np.arange(S, dtype=np.float64)  # 0: the noisiest step
    if spacing == "trailing":
        t = np.round(T - i * T / S) - 1
    else:
        t = np.round((T - 1) * (1 - i / max(S - 1, 1)) ** (2 if spacing == "quadratic" else 1))
    t = t.astype(int).tolist()
    for k in range(S - 2, -1, -1):  # quadratic rounds small t together when S nears T: lift each
        t[k] = max(t[k], t[k + 1] + 1)  # above the next (t_k + k <= T-1, so t_0 stays T-1)
    return list(zip(t, t[1:] + [-1]))


def ddim_sigma(abar_t, abar_prev, eta):
    """sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (Eq. 16)."""
    return eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_prev).sqrt()


def ddim_step(x_t, out, abar_t, abar_prev, eta, prediction, clip, noise=None):
    """x_t -> (x_prev, x0_pred) (DDIM Eq. 12, sigma from Eq. 16).

    code        paper (DDIM)               code        paper (DDIM)
    x_t         x_t                        abar_t      alpha_t
    x_prev      x_{t-1}, or x_{tau_{i-1}}  abar_prev   alpha_{t-1} (1 for t_prev = -1)
    out         the network's output       x0_pred     f_theta^(t)(x_t) (Eq. 9)
    eps         eps_theta^(t)(x_t)         sigma_t     sigma_t(eta) (Eq. 16)
    noise       eps_t ~ N(0, I); None where sigma_t = 0

    fp32 throughout; abar_t and abar_prev are 0-dim tensors (or broadcast against x_t).
    """
    # 1. Whatever the network predicts, read it as x0_pred and eps.
    x0_pred, eps = split_prediction(prediction, out, x_t, abar_t)
    # 2. Clip x0_pred to the data range and re-derive eps from it, so that x_t = sqrt(abar_t)
    #    x0_pred + sqrt(1 - abar_t) eps still holds: eta = 1 is then ddpm.py's clipped sampler.
    if clip:
        x0_pred = x0_pred.clamp(-1, 1)
        eps = (x_t - abar_t.sqrt() * x0_pred) / (1 - abar_t).sqrt()
    # 3. sigma_t (Eq. 16), and the "direction pointing to x_t", scaled to keep the variance.
    #    At eta = 0 sigma_t is 0 outright, so the step also runs upwards (abar_prev < abar_t).
    sigma_t = ddim_sigma(abar_t, abar_prev, eta) if eta > 0 else 0.0
    dir_xt = (1 - abar_prev - sigma_t ** 2).sqrt() * eps
    # 4. Eq. 12: x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t z.
    x_prev = abar_prev.sqrt() * x0_pred + dir_xt
    return (x_prev if noise is None else x_prev + sigma_t * noise), x0_pred


@torch.no_grad()
def ddim_sample(net, alphas_cumprod, x, pairs, prediction, eta=0.0, clip=True, noise=None,
                bf16=True, record=None):
    """x_T [B, ...] -> x_0, one Eq. 12 update per (t, t_prev) pair and nothing else (Sec. 4.2).
    net(x_t, t [B]) returns the prediction named by prediction; noise() draws N(0, I) like x, only
    where sigma_t > 0; record {step index: None} receives (x_t, x0_pred) of the first 16 images.
    No host syncs: the loop only queues work on the device."""
    for i, (t, t_prev) in enumerate(pairs):
        abar_t = alphas_cumprod[t]
        abar_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(abar_t)
        z = noise() if noise is not None and eta > 0 and t_prev >= 0 else None
        x_prev, x0_pred = ddim_step(x, predict(net, x, t, bf16), abar_t, abar_prev, eta,
                                    prediction, clip, z)
        if record is not None and i in record:
            record[i] = (x[:16].clone(), x0_pred[:16].clone())
        x = x_prev
    return x


def ddim_invert(net, alphas_cumprod, x0, pairs, prediction, bf16=True):
    """x_0 -> x_T: Eq. 12 at eta = 0 up the reversed pairs, x_next = sqrt(abar_next) x0_pred +
    sqrt(1 - abar_next) eps, an Euler step of the ODE (Eq. 13) the other way (Sec. 5.4). No clip:
    it must stay invertible. The data stands in for x at t = 0, where the network was trained."""
    up = [(max(t, 0), t_next) for t_next, t in reversed(pairs)]
    return ddim_sample(net, alphas_cumprod, x0, up, prediction, 0.0, False, None, bf16)


def slerp(z0, z1, a):
    """Spherical interpolation of two noises (Shoemake 1985; DDIM Sec. 5.3): [len(a), *z0.shape]."""
    theta = torch.arccos((z0 * z1).sum() / (z0.norm() * z1.norm()))
    a = a.view(-1, *[1] * z0.dim())
    return (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta)


# --------------------------------------------------------------------------------------------------
# Sampling: image k's noise comes from its own generator, so --batch does not change the images.


def keyed_noise(seed, first, count, shape, device):
    """noise() -> N(0, I) [count, *shape], row k - first from image k's generator, seeded with
    seed * 1_000_003 + k mod 2^32 (the CPU generator keeps 32 bits): distinct for every image."""
    gens = [torch.Generator(device).manual_seed((seed * 1_000_003 + k) % 2 ** 32)
            for k in range(first, first + count)]
    return lambda: torch.stack([torch.randn(shape, generator=g, device=device) for g in gens]
                               ).contiguous(memory_format=torch.channels_last)


def sample_images(net, abar, c, cfg, first, count, record=None):
    """Images first .. first+count-1, float [count, 3, H, W]; image k depends on (seed, k) only."""
    noise = keyed_noise(cfg.seed, first, count, (3, c["image_size"], c["image_size"]), abar.device)
    return ddim_sample(net, abar, noise(), timestep_pairs(c["T"], cfg.steps, cfg.spacing),
                       c["prediction"], cfg.eta, cfg.clip, noise, cfg.bf16, record)


def save(image, folder, filename):
    """Write a PIL image or a uint8 [H, W, 3] array; return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, filename)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path)
    return path


def sample_main(net, abar, c, cfg, name):
    """A grid of the first 64 images, the trajectory GIF, and with --n > 64 single PNGs (FID)."""
    batch, S, t0 = min(cfg.batch, cfg.n), cfg.steps, time.time()
    # GIF frames at these steps: denser towards the end, where the details form
    record = dict.fromkeys(np.unique((S - np.geomspace(S, 1, 40)).round().astype(int)).tolist())
    images, cr = [], "\r" if sys.stdout.isatty() else ""  # one line that updates, or a log
    for i in range(0, cfg.n, batch):  # the last batch is padded to a full one: no new shapes
        x = sample_images(net, abar, c, cfg, i, batch, None if i else record)
        images.append(to_uint8(x[:cfg.n - i]))
        if cfg.n > batch:
            print(f"{cr}sampled {min(i + batch, cfg.n)}/{cfg.n} ({time.time() - t0:.0f} s)",
                  end="" if cr and i + batch < cfg.n else "\n", flush=True)
    images, name = np.concatenate(images), f"{name}_{cfg.spacing}{S}_eta{cfg.eta:g}_seed{cfg.seed}"
    path = save(grid_array(torch.from_numpy(images[:64]).permute(0, 3, 1, 2) / 127.5 - 1),
                cfg.out, f"{name}.png")
    frames = [Image.fromarray(np.concatenate([grid_array(x_t, 4), grid_array(x0, 4)], axis=1))
              for x_t, x0 in (record[k] for k in sorted(record))]  # x_t | x0_pred
    frames[0].save(os.path.join(cfg.out, f"{name}.gif"), save_all=True, duration=80, loop=0,
                   append_images=frames[1:] + frames[-1:] * 12)  # hold the result for a second
    print(f"wrote {path} and {name}.gif ({time.time() - t0:.0f} s)")
    if cfg.n > 64:
        folder = os.path.join(cfg.out, f"{name}_n{cfg.n}")
        for k, im in enumerate(images):
            save(im, folder, f"{k:06d}.png")
        print(f"wrote {cfg.n} PNGs to {folder}")


def compare_main(net, abar, c, cfg, name, counts):
    """One grid, a row per step count, all rows from the same starting noises, labelled at left."""
    cols, size, font = min(cfg.n, 8), c["image_size"], ImageFont.load_default()
    rows = [sample_images(net, abar, c, replace(cfg, steps=S), 0, cols) for S in counts]
    grid = Image.fromarray(grid_array(torch.cat(rows), cols))
    margin = 8 + max(int(ImageDraw.Draw(grid).textlength(str(S), font=font)) for S in counts)
    im = Image.new("RGB", (grid.width + margin, grid.height), "white")
    im.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(im)
    for r, S in enumerate(counts):
        top, bottom = draw.textbbox((0, 0), str(S), font=font)[1::2]  # center it on its row
        draw.text((4, 2 + r * (size + 2) + (size - top - bottom) // 2), str(S), "black", font)
    print("wrote", save(im, cfg.out, f"{name}_compare{'-'.join(map(str, counts))}_{cfg.spacing}"
                                     f"_eta{cfg.eta:g}_seed{cfg.seed}.png"))


def invert_main(net, abar, c, cfg, name, path):
    """x_0 -> x_T -> x_0 at eta = 0 for the first --n images: input | reconstruction, and PSNR."""
    if not os.path.exists(path):
        fail(f"--invert {path}: no such image or folder -- pass an image or a folder of images")
    images, skipped = load_images(path, c["image_size"])
    if len(images) == 0:
        fail(f"--invert {path}: no readable images ({skipped} unreadable) -- pass "
             f"{'/'.join(e[1:] for e in IMAGE_EXTS)} files")
    x0 = torch.from_numpy(images[:cfg.n]).to(abar.device).permute(0, 3, 1, 2) / 127.5 - 1
    pairs, rec = timestep_pairs(c["T"], cfg.steps, cfg.spacing), []
    for i in range(0, len(x0), cfg.batch):
        x_T = ddim_invert(net, abar, x0[i:i + cfg.batch], pairs, c["prediction"], cfg.bf16)
        rec.append(ddim_sample(net, abar, x_T, pairs, c["prediction"], 0.0, False, None, cfg.bf16))
    rec = torch.cat(rec).clamp(-1, 1)
    mse = (rec - x0).square().mean(dim=(1, 2, 3)).clamp(min=1e-12)
    psnr = 10 * torch.log10(2 ** 2 / mse)  # the peak-to-peak range of [-1, 1] is 2
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    out = save(grid_array(torch.stack([x0[:32], rec[:32]], 1).flatten(0, 1)), cfg.out,
               f"{name}_invert_{stem}_{cfg.spacing}{cfg.steps}.png")
    print(f"reconstruction PSNR {psnr.mean():.2f} dB (worst {psnr.min():.2f}) over {len(x0)} "
          f"images, {cfg.steps} {cfg.spacing} steps each way; wrote {out} (input | reconstruction)")


def interp_main(net, abar, c, cfg, name):
    """Images sampled at eta = 0 from slerp(x_T of image 0, x_T of image 1): one strip."""
    z = keyed_noise(cfg.seed, 0, 2, (3, c["image_size"], c["image_size"]), abar.device)()
    x_T = slerp(z[0], z[1], torch.linspace(0, 1, cfg.frames, device=abar.device))
    x = ddim_sample(net, abar, x_T.contiguous(memory_format=torch.channels_last),
                    timestep_pairs(c["T"], cfg.steps, cfg.spacing), c["prediction"], 0.0, cfg.clip,
                    bf16=cfg.bf16)
    print("wrote", save(grid_array(x, cfg.frames), cfg.out,
                        f"{name}_interp_{cfg.spacing}{cfg.steps}_seed{cfg.seed}.png"))


# --------------------------------------------------------------------------------------------------
# Benchmark: the whole sampling loop, eager fp32 against bf16 + channels_last + torch.compile.


def bench(model, abar, c, cfg):
    """images/s and peak memory of --steps steps at --batch (at most 4 off CUDA: a smoke test)."""
    cuda, size = abar.is_cuda, c["image_size"]
    pairs = timestep_pairs(c["T"], cfg.steps, cfg.spacing)
    batch, reps = (cfg.batch, 3) if cuda else (min(cfg.batch, 4), 1)
    print(f"bench on {torch.cuda.get_device_name() if cuda else abar.device.type}, torch "
          f"{torch.__version__}: {cfg.steps} {cfg.spacing} steps, batch {batch}, {size}px, eta "
          f"{cfg.eta:g}; TF32 in fp32 convs {torch.backends.cudnn.allow_tf32}, matmuls "
          f"{torch.backends.cuda.matmul.allow_tf32}")
    x_T = torch.randn(batch, 3, size, size, device=abar.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def images_per_second(net, bf16, memory_format, reps):
        """(images/s over reps runs, peak GiB, seconds of the warm-up, compile included)."""
        x, seconds = x_T.contiguous(memory_format=memory_format), []
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        # First a warm-up of two steps (every step has the same shapes): it compiles and lets
        # cuDNN pick its algorithms. Then the timed runs of all the steps.
        for runs, steps in ((1, pairs[:2]), (reps, pairs)):
            t0 = time.perf_counter()
            for _ in range(runs):
                ddim_sample(net, abar, x, steps, c["prediction"], cfg.eta, cfg.clip,
                            lambda: torch.randn_like(x), bf16)
            sync()
            seconds.append(time.perf_counter() - t0)
        memory = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        return batch * reps / seconds[1], memory, seconds[0]

    eager = {}
    for tf32 in (False, True) if cuda else (True,):  # IEEE fp32, then the default: TF32 convs
        torch.backends.cudnn.allow_tf32 = tf32
        eager[tf32], memory, _ = images_per_second(model, False, torch.contiguous_format, 1)
        label = "eager fp32, contiguous" + ("" if tf32 else ", TF32 off")
        print(f"{label:44s} {eager[tf32]:8.1f} img/s  peak memory {memory:5.2f} GiB", flush=True)
    mode = cfg.compile_mode if cuda else "none"
    label = f"{'bf16' if cfg.bf16 and cuda else 'fp32'}, channels_last, compile {mode}"
    net = model.to(memory_format=torch.channels_last)
    try:
        torch.compiler.reset()
        net = compiled(net, mode)
        ips, memory, first = images_per_second(net, cfg.bf16, torch.channels_last, reps)
    except Exception as e:  # a compiler failure is one line of the report, not its end
        print(f"{label}: failed, {type(e).__name__}: {(str(e).splitlines() or [''])[0][:150]}")
    else:
        base, strict = eager[True], eager.get(False, eager[True])
        print(f"{label:44s} {ips:8.1f} img/s  peak memory {memory:5.2f} GiB  {ips / base:.2f}x "
              f"eager fp32 (TF32 convs), {ips / strict:.2f}x with TF32 off (first run, compile "
              f"included: {first:.0f} s)")
        # The same compiled network, as many calls with nothing between them: the loop's own cost.
        x, calls = x_T.contiguous(memory_format=torch.channels_last), reps * len(pairs)
        with torch.no_grad():
            predict(net, x, c["T"] // 2, cfg.bf16)
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                predict(net, x, c["T"] // 2, cfg.bf16)
            sync()
        evals = batch * calls / (time.perf_counter() - t0)
        print(f"{'  the network alone':44s} {evals / cfg.steps:8.1f} img/s  ({evals:,.0f} "
              f"network evals/s; the loop reaches {ips * cfg.steps / evals:.0%} of it)")


# --------------------------------------------------------------------------------------------------
# Command line: sample (default) | --compare | --invert | --interp | --bench; every Config field.


def int_tuple(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: sys.exit(f"ddim.py: {message} -- see python ddim.py --help")
    p.add_argument("--ckpt", default="ddpm.pt", help="from ddpm.py --train (default: ddpm.pt)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compare", type=int_tuple, metavar="S1,S2,..",
                      help="one grid: a row per step count, all from the same 8 starting noises")
    mode.add_argument("--invert", metavar="PATH",
                      help="an image or a folder: x_0 -> x_T -> x_0 at eta 0, side by side, PSNR")
    mode.add_argument("--interp", action="store_true",
                      help="sample at eta 0 along a slerp between two starting noises: one strip")
    mode.add_argument("--bench", action="store_true",
                      help="images/s and peak memory: eager fp32 vs bf16 + channels_last + compile")
    for f in fields(Config):
        extra = (dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool)
                 else dict(type=type(f.default)))
        p.add_argument(f"--{f.name.replace('_', '-')}", default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default})", **extra)
    args = p.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    check_config(cfg)
    model, c, step = load_checkpoint(args.ckpt)
    T, device = int(c["T"]), torch.device("cuda" if torch.cuda.is_available() else
                                          "mps" if torch.backends.mps.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
    if args.compare is not None and not (args.compare and all(1 <= S <= T for S in args.compare)):
        fail(f"--compare {','.join(map(str, args.compare))}: {args.ckpt} was trained with T = {T} "
             f"-- pass step counts from 1 to {T}")
    if args.compare is None and cfg.steps > T:
        fail(f"--steps {cfg.steps}: {args.ckpt} was trained with T = {T} -- pass 1 to {T}")
    where = torch.cuda.get_device_name() if device.type == "cuda" else device.type
    print(f"{args.ckpt}: step {step}, T = {T}, {c['schedule']} schedule, predicts "
          f"{c['prediction']}, {c['image_size']}px; on {where}")
    abar = make_schedule(c["schedule"], T)["alphas_cumprod"].to(device)
    if args.bench:
        return bench(model.to(device), abar, c, cfg)
    writable_or_fail(cfg.out)
    net = model.to(device, memory_format=torch.channels_last)
    name = f"ddim_{os.path.splitext(os.path.basename(args.ckpt))[0]}_step{step}"
    if args.compare is not None:
        compare_main(net, abar, c, cfg, name, args.compare)
    elif args.invert is not None:
        invert_main(net, abar, c, cfg, name, args.invert)
    elif args.interp:
        interp_main(net, abar, c, cfg, name)
    else:
        if cfg.n > cfg.batch and device.type == "cuda":
            net = compiled(net, cfg.compile_mode)  # compiling pays off over many batches
        sample_main(net, abar, c, cfg, name)


if __name__ == "__main__":
    main()
