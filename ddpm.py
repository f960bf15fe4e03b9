"""Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020, arXiv 2006.11239v2).

Trains the U-Net of unet.py to denoise cartoon faces (or your images) and draws new ones by
ancestral sampling (Algorithm 2): schedules, forward process, posterior, loss, training with an EMA
of the weights, sampling and a benchmark, in one file. The paper's network predicts the noise eps
(--prediction eps); this one predicts v by default (Salimans & Ho 2022). The samplers are the same,
but deterministic ones (ddim.py) then stay free of the speckle that errors in eps, amplified by
1/sqrt(abar_t) at high noise, leave in their samples (README, "Why v and not eps").

    python ddpm.py --train                         # built-in cartoons, 64x64, writes ddpm.pt
    python ddpm.py --train --minutes 6             # the same for 6 minutes of wall clock
    python ddpm.py --train --data DIR              # a folder of your images
    python ddpm.py --train --resume --steps 12000  # continue ddpm.pt where it stopped
    python ddpm.py --sample --ckpt ddpm.pt         # grid and denoising GIF (--n 5000: PNGs too)
    python ddpm.py --bench                         # images/s, MFU and memory of the default model
    torchrun --standalone --nproc_per_node=2 ddpm.py --train   # the same on 2 GPUs (DDP)

Notation (code -> paper). Code t = 0..T-1 is the paper's t = 1..T (t = 0: one step of noise).
    betas[t]            beta_t              variance of forward step t
    alphas[t]           alpha_t = 1 - beta_t
    alphas_cumprod[t]   abar_t = prod_{s <= t} alpha_s
    abar_prev           abar of the step sampled next; 1 before the first step (t_prev = -1)
    x0, eps, x_t        x_0, epsilon, x_t   data, noise, noised data
    v                   sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, 2202.00512)
    snr                 abar_t / (1 - abar_t)
"""
import argparse
import contextlib
import copy
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from unet import UNet

# --------------------------------------------------------------------------------------------------
# Config: every field is a command-line flag (--field-name) with this help text.


def arg(default, help):
    """A config field whose help text becomes its --help line."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # data
    data: str = arg("", "folder of images to train on (any size or mode); empty: built-in cartoons")
    image_size: int = arg(64, "side of the square training images; a multiple of 8")
    n_images: int = arg(10_000, "built-in cartoon faces to draw (ignored with --data)")
    # network (unet.py)
    ch: int = arg(128, "base channel count of the U-Net")
    ch_mult: tuple = arg((1, 2, 2, 2), "channel multiplier per resolution level, comma-separated")
    num_res_blocks: int = arg(2, "residual blocks per level")
    attn_levels: tuple = arg((2, 3), "levels with self-attention (0: full resolution)")
    dropout: float = arg(0.0, "dropout in the residual blocks (DDPM's 800k-step CIFAR-10 run: 0.1)")
    # diffusion
    T: int = arg(1000, "diffusion steps (DDPM: 1000)")
    schedule: str = arg("linear", "noise schedule: linear (DDPM) | cosine (Improved DDPM)")
    prediction: str = arg("v", "what the network predicts: eps | x0 | v (v: DDIM without speckle)")
    min_snr_gamma: float = arg(0.0, "min-SNR-gamma loss weighting (Hang et al. 2023); 0: off")
    # training
    steps: int = arg(8000, "optimizer steps (9 min 14 s on one H200, compile included)")
    minutes: float = arg(0.0, "train for this many minutes (compile included) instead of "
                                 "--steps; the LR schedule follows the clock from the end of the "
                                 "compile; 0: run --steps")
    batch: int = arg(128, "training batch size")
    lr: float = arg(8e-4, "peak learning rate of AdamW (DDPM: 2e-4 for 800k steps)")
    warmup: int = arg(300, "linear learning-rate warm-up steps")
    lr_decay: str = arg("cosine", "after warm-up: cosine (to 0 at the end) | constant")
    weight_decay: float = arg(0.0, "AdamW weight decay")
    grad_clip: float = arg(1.0, "clip the gradient norm to this (DDPM: 1.0)")
    ema_halflife_kimg: float = arg(50.0, "EMA half-life in thousands of images (EDM's EMA)")
    ema_rampup: float = arg(0.1, "cap the EMA half-life at this fraction of images seen; 0: off")
    flip: bool = arg(True, "random horizontal flips")
    compile: bool = arg(True, "torch.compile the network (CUDA only)")
    seed: int = arg(0, "random seed for training and sampling")
    log_every: int = arg(50, "steps between progress lines (each costs one host sync)")
    sample_every: int = arg(1000, "steps between sample grids written to --out; 0: never")
    ckpt_every: int = arg(1000, "steps between checkpoints (also written at the end and on Ctrl-C)")
    # sampling
    n: int = arg(64, "images to sample; more than 64 also writes each as a PNG (for FID)")
    sample_steps: int = arg(0, "ancestral steps; fewer than T respace the schedule (IDDPM Sec. 4); "
                               "0: T (training grids take at most 100)")
    sample_batch: int = arg(256, "sampling batch size")
    var: str = arg("small", "reverse variance: small (beta tilde, Eq. 7) | large (beta)")
    out: str = arg("out", "folder for sample grids, GIFs and PNGs")


def check_config(cfg):
    """One clear line for the first impossible value, before any work is done."""
    levels = len(cfg.ch_mult)
    choices = dict(schedule=("linear", "cosine"), prediction=("eps", "x0", "v"),
                   var=("small", "large"), lr_decay=("cosine", "constant"))
    problems = [(getattr(cfg, k) not in v, f"--{k.replace('_', '-')} {getattr(cfg, k)}: use "
                 + " | ".join(v)) for k, v in choices.items()]
    problems += [
        (cfg.image_size < 8 or cfg.image_size % 2 ** (levels - 1),
         f"--image-size {cfg.image_size} must be a multiple of {2 ** (levels - 1)} "
         f"(the U-Net halves it {levels - 1} times)"),
        (not 0 <= cfg.sample_steps <= cfg.T, f"--sample-steps must be between 0 and T={cfg.T}"),
        (any(not 0 <= a < levels for a in cfg.attn_levels),
         f"--attn-levels must be in 0..{levels - 1}"),
        (not 0 <= cfg.dropout < 1, "--dropout must be in [0, 1)"),
        (cfg.lr <= 0 or cfg.grad_clip <= 0, "--lr and --grad-clip must be positive")]
    problems += [(getattr(cfg, k) < 1, f"--{k.replace('_', '-')} must be at least 1") for k in
                 ("T", "steps", "batch", "ch", "num_res_blocks", "n", "sample_batch", "n_images",
                  "log_every")]
    problems += [(getattr(cfg, k) < 0, f"--{k.replace('_', '-')} must not be negative") for k in
                 ("minutes", "warmup", "weight_decay", "ema_halflife_kimg", "ema_rampup",
                  "min_snr_gamma", "sample_every", "ckpt_every")]
    for bad, message in problems:
        if bad:
            fail(message)


def fail(message):
    """Stop with one line on stderr naming the problem and the fix (exit status 1)."""
    sys.exit(f"ddpm.py: {message}")


# --------------------------------------------------------------------------------------------------
# Data: uint8 [N, H, W, 3] held on the device, turned into [-1, 1] floats a batch at a time.

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_folder(path, size):
    """Readable images under path as uint8 [N, size, size, 3], center-cropped to a square and
    resized with an antialiasing filter; also returns how many files could not be read."""
    names = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
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


def load_data(cfg):
    if not cfg.data:
        import cartoons  # only the built-in data needs it
        print(f"drawing {cfg.n_images} cartoon faces at {cfg.image_size}x{cfg.image_size}")
        return cartoons.make(cfg.n_images, cfg.image_size, seed=0)
    if not os.path.isdir(cfg.data):
        fail(f"--data {cfg.data}: no such folder -- pass a folder of png/jpg/webp/bmp images")
    images, skipped = load_folder(cfg.data, cfg.image_size)
    if len(images) == 0:
        fail(f"--data {cfg.data}: no readable images ({skipped} unreadable) -- pass a folder of "
             "png/jpg/webp/bmp images")
    print(f"loaded {len(images)} images from {cfg.data} ({skipped} unreadable, skipped)")
    return images


def get_batch(data, batch, flip):
    """A random batch from uint8 [N, H, W, 3] on the device -> float [B, 3, H, W] in [-1, 1]."""
    x = data[torch.randint(len(data), (batch,), device=data.device)]
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1  # NHWC storage: already channels_last
    if flip:
        x = torch.where(torch.rand(batch, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    return x


# --------------------------------------------------------------------------------------------------
# Model


def build_model(cfg):
    return UNet(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                attn_levels=cfg.attn_levels, dropout=cfg.dropout)


def autocast(device):
    """bf16 autocast around the network on CUDA; a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# The math of DDPM. Schedules in float64, cast once to float32; x tensors are [B, C, H, W].


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


def abar_at(sched, t):
    """abar_t for integer t [B], with abar_{-1} = 1 (no noise before the first step)."""
    abar = sched["alphas_cumprod"].to(t.device)
    return torch.where(t >= 0, abar[t.clamp(min=0)], torch.ones((), device=t.device))


def bcast(a, x):
    """[B] -> [B, 1, 1, 1], to broadcast a per-sample scalar over an image batch."""
    return a.view(-1, *([1] * (x.dim() - 1)))


def q_sample(sched, x0, t, eps):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, a draw from q(x_t | x_0) (DDPM Eq. 4)."""
    abar = bcast(abar_at(sched, t), x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def posterior(x0, x_t, abar_t, abar_prev):
    """Mean and variance of q(x_prev | x_t, x0) (DDPM Eqs. 6-7), for any earlier step prev.

    With alpha = abar_t / abar_prev and beta = 1 - alpha (one step: alpha_t and beta_t):
    mean = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t,
    var = beta_tilde = (1 - abar_prev) / (1 - abar_t) beta.     abar_t, abar_prev: [B, 1, 1, 1].
    """
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    mean = (abar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - abar_prev) * x_t) / (1 - abar_t)
    return mean, (1 - abar_prev) / (1 - abar_t) * beta


def split_prediction(prediction, out, x_t, abar):
    """The network output as (x0, eps), whichever it predicts: the one place that converts."""
    if prediction == "eps":  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)  (Eq. 4 solved for x0)
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), out
    if prediction == "x0":
        return out, (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
    # v = sqrt(abar) eps - sqrt(1-abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1-abar) v,
    #                                            eps = sqrt(1-abar) x_t + sqrt(abar) v
    return abar.sqrt() * x_t - (1 - abar).sqrt() * out, (1 - abar).sqrt() * x_t + abar.sqrt() * out


def training_target(prediction, x0, eps, abar):
    return {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]


def loss_weight(prediction, abar, gamma):
    """Min-SNR-gamma weights, min(snr, gamma) / snr in eps units (Hang et al. 2023, Eqs. 8-9).

    In x0 units the weight is min(snr, gamma), in v units min(snr, gamma) / (snr + 1); gamma 0: 1.
    """
    if gamma == 0:
        return torch.ones_like(abar)
    snr = abar / (1 - abar)
    return torch.clamp(snr, max=gamma) / {"eps": snr, "x0": 1, "v": snr + 1}[prediction]


def diffusion_loss(model, sched, x0, cfg):
    """L_simple: || target - net(x_t, t) ||^2, t uniform, eps ~ N(0, I) (DDPM Eq. 14, Alg. 1)."""
    t = torch.randint(cfg.T, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    with autocast(x0.device):
        out = model(q_sample(sched, x0, t, eps), t)
    abar = abar_at(sched, t)
    target = training_target(cfg.prediction, x0, eps, bcast(abar, x0))
    mse = (out.float() - target).square().mean(dim=(1, 2, 3))
    return (loss_weight(cfg.prediction, abar, cfg.min_snr_gamma) * mse).mean()


def timesteps(T, steps):
    """steps evenly spaced steps from T-1 down to 0; all T when steps == T (IDDPM Sec. 4)."""
    return torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()


@torch.no_grad()
def sample(model, sched, shape, cfg, device, generator=None, clip=True, record=None):
    """Ancestral sampling, Algorithm 2: x_T ~ N(0, I), then x_prev ~ p(x_prev | x_t) down to x_0.

    model(x_t, t) returns the prediction named by cfg.prediction. Each step reads x0 from it
    (clipped to [-1, 1] for images) and takes the posterior mean (Eq. 7) with variance beta_tilde
    (small) or beta (large); the last step adds no noise. record, a dict {step index: None},
    receives (x_t, x0) of the first 16 images at those indices.
    """
    x = torch.randn(shape, device=device, generator=generator)
    ts = timesteps(cfg.T, cfg.sample_steps or cfg.T).tolist()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((shape[0],), t, device=device)
        abar_t = bcast(abar_at(sched, tt), x)
        abar_prev = bcast(abar_at(sched, torch.full_like(tt, t_prev)), x)
        with autocast(device):
            out = model(x, tt)
        x0, _ = split_prediction(cfg.prediction, out.float(), x, abar_t)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, var = posterior(x0, x, abar_t, abar_prev)
        if cfg.var == "large":
            var = 1 - abar_t / abar_prev  # sigma_t^2 = beta_t (DDPM Sec. 3.2)
        if record is not None and i in record:
            record[i] = (x[:16].clone(), x0[:16].clone())
        noise = torch.randn(shape, device=device, generator=generator) if t_prev >= 0 else 0
        x = mean + var.sqrt() * noise
    return x


# --------------------------------------------------------------------------------------------------
# Training


def writable_or_fail(out, ckpt_path=None):
    """Make the output folder and try writing there and at the checkpoint's path: a path that
    cannot be written stops the run now, with one line, and not after hours of training."""
    try:
        paths = [os.path.join(out, ".write_test")] + ([f"{ckpt_path}.tmp"] if ckpt_path else [])
        for path in paths:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            open(path, "wb").close()
            os.remove(path)
    except OSError as e:
        flags = "--out and --ckpt" if ckpt_path else "--out"
        fail(f"cannot write {e.filename} ({e.strerror}) -- pass a writable {flags}")


def cpu_copy(state):
    """The tensors of a (nested) state copied to the CPU: a snapshot later steps leave as it is."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v) for v in state)
    return state


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: a crash mid-save keeps the previous file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "wb") as f:
        torch.save(dict(kind="ddpm", **state), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)


def load_checkpoint(path):
    """A ddpm.py checkpoint as a dict, or one clear line saying why not."""
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path} -- train one with `python ddpm.py --train` or pass --ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{path} is not a readable checkpoint ({type(e).__name__}) -- it may be truncated or "
             "not a PyTorch file; retrain or pass another --ckpt")
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind != "ddpm":
        fail(f"{path} is {f'a {kind} checkpoint' if kind else 'no checkpoint of this repository'},"
             " not a ddpm.py one -- pass a checkpoint written by `python ddpm.py --train`")
    return ckpt


def config_from(saved, given):
    """The checkpoint's config, with the flags given on this command line on top."""
    known = {f.name for f in fields(Config)}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    return replace(Config(**saved), **given)


def pick_device(rank=0):
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its conv algorithms
        torch.backends.cuda.matmul.allow_tf32 = True
        return torch.device("cuda", rank)
    if torch.backends.mps.is_available():
        print("no CUDA GPU: using Apple MPS (float32, no torch.compile)")
        return torch.device("mps")
    print("no CUDA GPU: running on the CPU, which is slow -- a smoke run: --steps 50 --ch 32")
    return torch.device("cpu")


def distributed():
    """(rank, local rank, world size) under torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE,
    after joining its process group (NCCL on GPUs, gloo on CPUs); (0, 0, 1) otherwise. Ranks
    other than 0 print nothing: rank 0 alone logs and writes files."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_rank():
        sys.stdout = open(os.devnull, "w")
    return dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()


def learning_rate(cfg, step, progress):
    """Linear warm-up, then constant or cosine decay to 0 at progress = 1."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * warm * (cosine if cfg.lr_decay == "cosine" else 1.0)


def clock_progress(seconds, budget, ready, at_ready):
    """How far a --minutes run's LR schedule is after `seconds` of its `budget` (both in seconds).
    The first step compiles the network, so the schedule waits for it: from `ready`, the clock
    reading when that step was done (None before), it runs from `at_ready` to 1 over the time
    that is left."""
    if ready is None:
        return at_ready
    return min(1.0, at_ready + (1 - at_ready) * (seconds - ready) / max(budget - ready, 1e-9))


def ema_beta(cfg, nimg):
    """Decay per step for an EMA half-life of ema_halflife_kimg, shorter early on (EDM App. F)."""
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup:
        halflife = min(halflife, nimg * cfg.ema_rampup)
    return 0.5 ** (cfg.batch / max(halflife, 1e-8))


def compile_for_training(net, cuda_graphs=True):
    """torch.compile for the training step (forward and backward), with three settings."""
    # unet.DenseGrad is a custom autograd.Function, and AOTAutograd's cache passes over graphs with
    # one unless this flag is on (PyTorch PR 149751; the key covers the Function's forward and
    # backward, so editing them misses). With it a run that finds the compile cache warm loads the
    # traced forward and backward instead of tracing them again: first step 9.7 s against 26 s
    # without it, the default U-Net on H200s (README: Speed).
    import torch._functorch.config as aot_config  # not loaded by `import torch` alone
    flag = "autograd_cache_allow_custom_autograd_functions"
    if hasattr(aot_config, flag):  # in PyTorch releases since 2025
        setattr(aot_config, flag, True)
    # Inductor's heuristic keeps a training graph in NCHW when a convolution has twice as many
    # input as output channels (a U-Net's decoder), so cuDNN's backward then copied every
    # activation back to channels_last. Forced channels_last, for this graph alone: 1,977
    # images/s against 1,753 to 1,774 before, on H200s (--bench).
    # CUDA graphs (what mode="reduce-overhead" sets): the compiled forward and backward launch
    # about 1,100 kernels a step, and launching them one by one took the CPU 59 to 67 ms a step,
    # more than the GPU's 50 ms (H200); recorded once and replayed, 2,465 images/s against 1,900
    # to 2,180 in a process that had compiled from a cold cache (README: Speed).
    return torch.compile(net, options={"force_layout_optimization": True,
                                       "triton.cudagraphs": cuda_graphs})


def make_trainer(cfg, device, world=1):
    """The network, its EMA, the optimizer and one training step (compiled on CUDA). With world > 1
    each process takes cfg.batch / world images and DDP averages the gradients over processes."""
    if device.type == "cuda":
        # PyTorch 2.11 on H100s and H200s runs attention through cuDNN, whose bf16 backward has
        # been reported to return NaN gradients now and then while the loss is healthy
        # (pytorch/pytorch#196678, NVIDIA/cudnn-frontend#1072, kyutai-labs/pocket-tts#264). One
        # default run here did just that, at step 2,750 of 8,000 (README: "A NaN"); that cuDNN
        # caused it is not proven. Training takes FlashAttention's kernels instead (0.7% slower).
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    net = DistributedDataParallel(model) if world > 1 else model  # it syncs the initial weights
    compiled = cfg.compile and device.type == "cuda"
    graphs = compiled and world == 1  # CUDA graphs: not tried with DDP
    if compiled:
        net = compile_for_training(net, cuda_graphs=graphs)
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def step(sched, data, lr, beta):
        if graphs:  # a new step: the graphs may overwrite the last step's outputs (all used)
            torch.compiler.cudagraph_mark_step_begin()
        for g in opt.param_groups:
            g["lr"] = lr
        loss = diffusion_loss(net, sched, get_batch(data, cfg.batch // world, cfg.flip), cfg)
        loss.backward()  # under DDP the gradients arrive averaged over processes
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema_params, params, 1 - beta)  # ema <- beta ema + (1 - beta) theta
        return loss.detach()

    return model, ema, opt, step


def train(cfg, ckpt_path, state=None):
    """Algorithm 1 with AdamW, EMA and checkpoints; state: a checkpoint to continue from."""
    rank, local_rank, world = distributed()
    if cfg.batch % world:
        fail(f"--batch {cfg.batch} must divide evenly over the {world} processes")
    device = pick_device(local_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    data = torch.from_numpy(load_data(cfg)).to(device)  # uint8, NHWC, on the device
    model, ema, opt, train_step = make_trainer(cfg, device, world)
    sched = {k: v.to(device) for k, v in make_schedule(cfg.schedule, cfg.T).items()}
    step, seconds = 0, 0.0
    if state:
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
        except (RuntimeError, KeyError, ValueError) as e:
            fail(f"{ckpt_path} does not fit this network ({str(e).splitlines()[0][:100]}) -- "
                 "resume without changing the network flags")
        step, seconds = state["step"], state["seconds"]
        if world == 1:  # the saved random state: the run goes on as if it had never stopped
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"])
        print(f"resumed {ckpt_path} at step {step}")
    if world > 1:  # each process draws its own data and noise
        torch.manual_seed(cfg.seed + 1_000_003 * (rank + 1) + step)
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    print(f"training on {world} x {device.type}{gpu}: {len(data)} images {cfg.image_size}px, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, batch {cfg.batch}"
          + (", compiling the network first (a minute or two)" if cfg.compile and gpu else ""))
    if rank == 0:
        writable_or_fail(cfg.out, ckpt_path)
    # Checkpoints: a copy of the state on the CPU, written to disk by a thread while training goes
    # on (a 634 MB file for the default network, fsync'd); one write at a time.
    writer, writing, saved_step = ThreadPoolExecutor(max_workers=1), None, None

    def written():
        """Wait for the checkpoint being written; a failed write stops the run with one line."""
        nonlocal writing
        if writing:
            future, writing = writing, None
            try:
                future.result()
            except OSError as e:
                fail(f"could not write {ckpt_path} ({e.strerror or e}) -- free some disk space or"
                     " pass another --ckpt; the last checkpoint written, if any, is intact")

    def checkpoint(wait=False):
        """Save the state of this step (once: the last step may also be a --ckpt-every one)."""
        nonlocal writing, saved_step
        if rank == 0:
            written()
            if saved_step != step:
                rng = dict(rng_cpu=torch.get_rng_state())
                if device.type == "cuda":
                    rng["rng_cuda"] = torch.cuda.get_rng_state()
                state = cpu_copy(dict(model=model.state_dict(), ema=ema.state_dict(),
                                      opt=opt.state_dict(), **rng))
                writing = writer.submit(save_checkpoint, ckpt_path, config=asdict(cfg),
                                        step=step, seconds=seconds, **state)
                saved_step = step
            if wait:
                written()

    def finite_or_stop(loss_sum, steps):
        """The host sync: the loss summed since the last check is NaN if any step's was."""
        if world > 1:  # every process sees the same mean, so all stop or none
            dist.all_reduce(loss_sum)
            loss_sum /= world
        loss = loss_sum.item() / max(steps, 1)
        if not math.isfinite(loss):
            written()  # the last good state, if it is being written, reaches the disk
            fail(f"the loss became {loss} near step {step}; stopped without saving, so "
                 f"{ckpt_path} keeps the last good state -- lower --lr or raise --warmup, then "
                 "--resume")
        return loss

    budget, start = cfg.minutes * 60, step
    t_start = time.time() - seconds  # the clock includes earlier runs of a resumed training
    if world > 1:  # rank 0's clock for all, so that every process takes the same LR at each step
        clock = torch.tensor([t_start], dtype=torch.float64, device=device)
        dist.broadcast(clock, 0)
        t_start = clock.item()
    t_last, step_last, checked = time.time(), step, step
    # The clock reading when this run's first step (the compile) was done, and the schedule's
    # progress then: 0, or for a resumed run the share of the budget used (a longer budget
    # stretches the rest of the schedule, as more --steps do).
    ready, at_ready = None, min(1.0, seconds / budget) if budget else 0.0
    loss_sum, cr = torch.zeros((), device=device), "\r" if sys.stdout.isatty() else ""
    stop = []  # Ctrl-C finishes the step in flight, then saves; a second Ctrl-C stops at once
    # (not under torchrun, which passes the terminal's Ctrl-C on: each process gets two)

    def on_signal(*_):
        if stop and world == 1:
            raise KeyboardInterrupt
        stop.append(1)

    def stopping():
        """Ctrl-C (or torchrun's SIGTERM) or the time budget; processes under DDP decide together,
        at progress lines, so that they leave the loop at the same step."""
        local = bool(stop) or bool(budget) and time.time() - t_start >= budget
        if world == 1:
            return local
        flag = torch.tensor([float(local)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    while (budget or step < cfg.steps) and not (
            (world == 1 or step % cfg.log_every == 0) and stopping()):
        seconds = time.time() - t_start  # progress: of --minutes if given, else of --steps
        progress = (clock_progress(seconds, budget, ready, at_ready) if budget
                    else step / cfg.steps)
        lr = learning_rate(cfg, step, progress)
        loss_sum += train_step(sched, data, lr, ema_beta(cfg, step * cfg.batch))
        step += 1
        if step == start + 1:  # the first step compiled: time the ones after it
            t_last, step_last = time.time(), step
            ready = t_last - t_start
        if step % cfg.log_every == 0 or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
            loss = finite_or_stop(loss_sum, step - checked)  # never log or save a NaN
            loss_sum.zero_()
            checked = step
        if step % cfg.log_every == 0:
            now = time.time()
            rate = (step - step_last) * cfg.batch / max(now - t_last, 1e-9)
            t_last, step_last, seconds = now, step, now - t_start
            left = (budget - seconds if budget
                    else (cfg.steps - step) * cfg.batch / max(rate, 1e-9))
            of = "" if budget else f"/{cfg.steps}"
            print(f"{cr}step {step}{of} | loss {loss:.4f} | lr {lr:.2e} | {rate:,.0f} img/s | "
                  f"{fmt_time(seconds)} | ETA {fmt_time(left)}   ",
                  end="" if cr else "\n", flush=True)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            checkpoint()
        if cfg.sample_every and step % cfg.sample_every == 0 and rank == 0:
            write_training_grid(ema, sched, cfg, device, step)
            t_last = time.time()  # keep the grid's time out of the images/s figure
    if main_thread:
        for s, handler in previous.items():
            signal.signal(s, handler)
    finite_or_stop(loss_sum, step - checked)  # the steps since the last check must be finite too
    seconds = time.time() - t_start
    checkpoint(wait=True)
    writer.shutdown()
    if world > 1:
        dist.barrier()  # no process ends while rank 0 is still writing
    if stop:
        print(f"\ninterrupted at step {step}: saved {ckpt_path}; continue with --resume")
        sys.exit(130)
    if rank == 0:
        write_training_grid(ema, sched, cfg, device, step)
    print(f"\ndone: {step} steps in {fmt_time(seconds)}; wrote {ckpt_path}")
    if world > 1:
        dist.destroy_process_group()


def write_training_grid(ema, sched, cfg, device, step):
    """64 samples from the EMA network with at most 100 respaced steps: a look at progress."""
    quick = replace(cfg, sample_steps=min(100, cfg.sample_steps or cfg.T))
    gen = torch.Generator(device).manual_seed(cfg.seed)
    x = sample(ema, sched, (64, 3, cfg.image_size, cfg.image_size), quick, device, gen)
    Image.fromarray(grid_array(x)).save(os.path.join(cfg.out, f"ddpm_train_step{step:07d}.png"))


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------------------------------
# Sampling


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


def sample_main(given, ckpt_path):
    """A grid of the first 64 samples, the denoising GIF, and with --n > 64 one PNG per sample."""
    device = pick_device()
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from(ckpt["config"], given)
    check_config(cfg)
    writable_or_fail(cfg.out)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["ema"])
    except (RuntimeError, KeyError) as e:
        fail(f"{ckpt_path}: its weights do not fit its config ({str(e).splitlines()[0][:100]}) "
             "-- do not pass network flags with --sample")
    model = model.to(device, memory_format=torch.channels_last).eval()
    net = torch.compile(model) if cfg.compile and device.type == "cuda" and cfg.n > 256 else model
    sched = {k: v.to(device) for k, v in make_schedule(cfg.schedule, cfg.T).items()}
    steps = cfg.sample_steps or cfg.T
    name = f"{os.path.splitext(os.path.basename(ckpt_path))[0]}_step{ckpt['step']}_" \
           f"{cfg.var}{steps}_seed{cfg.seed}"
    gen = torch.Generator(device).manual_seed(cfg.seed)
    # GIF frames at these step indices: denser towards the end, where the details form
    record = dict.fromkeys(np.unique((steps - np.geomspace(steps, 1, 40)).round().astype(int)))
    images, t0 = [], time.time()
    for i in range(0, cfg.n, cfg.sample_batch):  # full batches only: one compiled shape
        x = sample(net, sched, (cfg.sample_batch, 3, cfg.image_size, cfg.image_size), cfg,
                   device, gen, record=record if i == 0 else None)
        images.append(to_uint8(x[:cfg.n - i]))
        print(f"\rsampled {min(i + cfg.sample_batch, cfg.n)}/{cfg.n} "
              f"({fmt_time(time.time() - t0)})", end="", flush=True)
    images = np.concatenate(images)
    path = os.path.join(cfg.out, f"{name}.png")
    Image.fromarray(grid_array(torch.from_numpy(images[:64]).permute(0, 3, 1, 2) / 127.5 - 1))\
        .save(path)
    frames = [Image.fromarray(np.concatenate([grid_array(x_t, 4), grid_array(x0, 4)], axis=1))
              for x_t, x0 in (record[k] for k in sorted(record))]  # x_t | predicted x_0
    frames[0].save(os.path.join(cfg.out, f"{name}.gif"), save_all=True, duration=80, loop=0,
                   append_images=frames[1:] + frames[-1:] * 12)  # hold the result for a second
    print(f"\nwrote {path} and {name}.gif")
    if cfg.n > 64:
        folder = os.path.join(cfg.out, f"{name}_n{cfg.n}")
        os.makedirs(folder, exist_ok=True)
        for k, im in enumerate(images):
            Image.fromarray(im).save(os.path.join(folder, f"{k:06d}.png"))
        print(f"wrote {cfg.n} PNGs to {folder}")


# --------------------------------------------------------------------------------------------------
# Benchmark: what a training step and a sampling step cost on this machine.


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds_per_call(fn, device, reps, warmup=3):
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def bench(cfg):
    """Training images/s and MFU (eager, then compiled), peak memory, sampling evals/s.

    MFU = FLOPs of a step (torch.utils.flop_counter: matmuls, convolutions, attention) / its time /
    the dense bf16 matmul rate measured here (8192^3; fp32 off CUDA)."""
    from torch.utils.flop_counter import FlopCounterMode
    device = pick_device()
    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    peak = 2 * n ** 3 / seconds_per_call(lambda: a @ b, device, reps=20)
    print(f"bench on {torch.cuda.get_device_name() if cuda else device.type}, torch "
          f"{torch.__version__}, batch {cfg.batch}, {cfg.image_size}px; matmul peak "
          f"{peak / 1e12:.0f} TFLOP/s measured ({'bf16' if cuda else 'fp32'})")
    torch.manual_seed(cfg.seed)
    data = torch.randint(0, 256, (4096, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                         device=device)
    sched = {k: v.to(device) for k, v in make_schedule(cfg.schedule, cfg.T).items()}
    for compiled in [False, True] if cfg.compile and cuda else [False]:
        model, ema, opt, train_step = make_trainer(replace(cfg, compile=compiled), device)
        if not compiled:
            with FlopCounterMode(display=False) as counter:
                diffusion_loss(model, sched, get_batch(data, cfg.batch, False), cfg).backward()
            model.zero_grad(set_to_none=True)
            flops = counter.get_total_flops()
            print(f"model    {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
                  f"{flops / cfg.batch / 3e9:.1f} GFLOP per image forward (a training step: 3x)")
        t0 = time.time()
        train_step(sched, data, cfg.lr, 0.999)
        sync(device)
        first = time.time() - t0  # compilation, cuDNN autotuning
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        dt = seconds_per_call(lambda: train_step(sched, data, cfg.lr, 0.999), device,
                              reps=50 if cuda else 2, warmup=5)
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        print(f"training {'compiled' if compiled else 'eager   '} {cfg.batch / dt:,.0f} img/s, "
              f"{dt * 1e3:.1f} ms/step, {flops / dt / 1e12:.0f} TFLOP/s, MFU "
              f"{flops / dt / peak:.1%}, peak memory {mem:.1f} GiB (first step {first:.0f} s)",
              flush=True)
    net = torch.compile(ema) if cfg.compile and cuda else ema  # sampling: network evaluations
    x = torch.randn(cfg.sample_batch, 3, cfg.image_size, cfg.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    t = torch.full((cfg.sample_batch,), cfg.T // 2, device=device)

    def evaluate():
        with torch.no_grad(), autocast(device):
            net(x, t)
    # As many calls as DDIM-50 makes for three batches, seconds on a GPU: the rate a sampling run
    # sustains (an H200 then draws 686 to 695 of its 700 W and lowers its clocks), not a burst's.
    reps = 150 if cuda else 1
    ds = seconds_per_call(evaluate, device, reps=reps)
    print(f"sampling {cfg.sample_batch / ds:,.0f} network evals/s at batch {cfg.sample_batch} "
          f"({reps} calls, {reps * ds:.1f} s): {cfg.sample_batch / ds / cfg.T:.1f} img/s with "
          f"{cfg.T} steps")


# --------------------------------------------------------------------------------------------------
# Command line: --train | --sample | --bench, and every Config field as a flag.


def int_tuple(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: sys.exit(f"ddpm.py: {message} -- see python ddpm.py --help")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (writes --ckpt, grids in --out)")
    mode.add_argument("--sample", action="store_true", help="sample from --ckpt into --out")
    mode.add_argument("--bench", action="store_true", help="time training and sampling steps")
    p.add_argument("--ckpt", default="ddpm.pt", help="checkpoint path (default: ddpm.pt)")
    p.add_argument("--resume", action="store_true", help="with --train: continue --ckpt")
    for f in fields(Config):
        kind = {bool: None, tuple: int_tuple}.get(type(f.default), type(f.default))
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        extra = dict(action=argparse.BooleanOptionalAction) if kind is None else dict(type=kind)
        p.add_argument(f"--{f.name.replace('_', '-')}", default=argparse.SUPPRESS,
                       help=f"{f.metadata['help']} (default: {shown})", **extra)
    args = p.parse_args(argv)
    return args, {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}


def main(argv=None):
    args, given = parse_args(argv)
    if args.resume and not args.train:
        fail("--resume goes with --train")
    if args.sample:
        return sample_main(given, args.ckpt)
    state = load_checkpoint(args.ckpt) if args.resume else None
    cfg = config_from(state["config"], given) if state else replace(Config(), **given)
    check_config(cfg)
    if args.bench:
        return bench(cfg)
    if not args.resume and os.path.exists(args.ckpt):
        fail(f"{args.ckpt} exists -- add --resume to continue it, or --ckpt NEW.pt for a new run")
    train(cfg, args.ckpt, state)


if __name__ == "__main__":
    main()
