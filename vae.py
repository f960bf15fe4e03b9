"""Auto-Encoding Variational Bayes (Kingma & Welling 2013, arXiv 1312.6114v11).

A convolutional VAE on cartoon faces (or your images): trains on the ELBO, samples from the prior,
reconstructs, interpolates, and reports the held-out -ELBO and IWAE bound in nats and bits/dim.

    python vae.py --train                 # built-in cartoons, 64x64, writes vae.pt
    python vae.py --train --data DIR      # a folder of images; --holdout of them kept for --eval
    python vae.py --sample --n 5000       # a grid of 64 and 5000 single PNGs (for FID) in out/
    python vae.py --recon | --interp      # held-out images above reconstructions | latent strips
    python vae.py --eval                  # held-out -ELBO = recon + KL, and IWAE with K = 100
    python vae.py --bench                 # images/s, MFU, memory of the default model
    torchrun --standalone --nproc_per_node=2 vae.py --train   # the same on 2 GPUs (DDP)

Likelihood. Pixels x in {0..255}^D, D = 3 H W, are dequantised, y = x + u with u ~ U[0, 1)^D, and
the networks see s = y / 128 - 1 in [-1, 1). p(s|z) = N(s; mean(z), diag sigma_c^2), with one
learned sigma per colour channel c (as in sigma-VAE, Rybkin et al. 2020, arXiv 2006.13202). In the
units of y, log p(y|z) = log p(s|z) - D log 128 (change of variables), and E_u log p(x + u) <=
log P(x) by Jensen (Theis et al. 2016, arXiv 1511.01844, Sec. 3.1): the bits/dim printed,
-log p(y) / (D ln 2), bound those of the 8-bit images from above. Pictures show mean(z), not
draws from p(x|z).

Notation (code -> paper). Prior p(z) = N(0, I); q(z|x) = N(mu, diag exp(logvar)).
    mu, logvar     mu_phi(x), log sigma_phi(x)^2    encoder outputs, [B, Z] each
    eps, z         epsilon ~ N(0, I), z = mu + exp(logvar / 2) eps (the reparameterisation)
    log_sigma      log sigma_c of p(x|z), [3]
    recon, kl      log p(x|z) at one z ~ q(z|x); KL(q(z|x) || p(z)), closed form; ELBO = recon - kl
    K              importance samples of the IWAE bound (Burda et al. 2015, arXiv 1509.00519v4)
"""
import argparse
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

# --------------------------------------------------------------------------------------------------
# Config: every field is a command-line flag (--field-name) with this help text.


def arg(default, help):
    """A config field whose help text becomes its --help line."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # data
    data: str = arg("", "folder of images to train on (any size or mode); empty: built-in cartoons")
    holdout: float = arg(0.05, "with --data: fraction of it held out of training, for --eval")
    image_size: int = arg(64, "side of the square images")
    n_images: int = arg(10_000, "built-in cartoon faces to train on (drawn with seed 0)")
    n_eval: int = arg(1000, "held-out images for --eval, at most (cartoons: drawn with seed 1)")
    # network: 26.3M parameters at these defaults (4.9 GFLOP a forward pass of one 64px image)
    ch: int = arg(64, "channels at full resolution")
    ch_mult: tuple = arg((1, 2, 4, 8), "channel multiplier per level; each level halves the side")
    z_dim: int = arg(512, "latent dimensions Z")
    # training
    beta: float = arg(1.0, "weight of the KL term (1: the ELBO; others: a beta-VAE)")
    steps: int = arg(10_000, "optimizer steps")
    minutes: float = arg(0.0, "train for this many minutes (compile included) instead of "
                                 "--steps; the LR schedule follows the clock from the end of the "
                                 "compile; 0: run --steps")
    batch: int = arg(256, "training batch size")
    lr: float = arg(1e-3, "peak learning rate of AdamW")
    warmup: int = arg(200, "linear learning-rate warm-up steps, then cosine decay to 0")
    grad_clip: float = arg(1.0, "clip the gradient norm to this")
    flip: bool = arg(True, "random horizontal flips")
    compile: bool = arg(True, "torch.compile the training step (CUDA only)")
    seed: int = arg(0, "random seed for training, sampling and evaluation")
    log_every: int = arg(50, "steps between progress lines (each costs one host sync)")
    sample_every: int = arg(1000, "steps between prior-sample grids written to --out; 0: never")
    ckpt_every: int = arg(1000, "steps between checkpoints (also written at the end and on Ctrl-C)")
    # sampling and evaluation
    n: int = arg(64, "images for --sample; more than 64 also writes each one as a PNG (for FID)")
    iwae_k: int = arg(100, "importance samples K of the IWAE bound in --eval")
    sample_batch: int = arg(1024, "decoder batch for sampling and evaluation")
    out: str = arg("out", "folder for grids and PNGs")


def check_config(cfg):
    """One clear line for the first impossible value, before any work is done."""
    levels = len(cfg.ch_mult)
    problems = [
        (levels == 0 or min(cfg.ch_mult) < 1, "--ch-mult needs positive integers, e.g. 1,2,4,8"),
        (cfg.image_size % 2 ** levels or cfg.image_size < 2 ** levels,
         f"--image-size {cfg.image_size} must be a multiple of {2 ** levels} "
         f"(the encoder halves it {levels} times)"),
        (not 0 <= cfg.holdout < 1, "--holdout must be in [0, 1)"),
        (cfg.lr <= 0 or cfg.grad_clip <= 0, "--lr and --grad-clip must be positive"),
        (os.path.isfile(cfg.out), f"--out {cfg.out} is a file -- pass a folder")]
    for least, must, names in [
            (1, "be at least 1", "image_size n_images n_eval ch z_dim steps batch log_every n "
                                 "iwae_k sample_batch"),
            (0, "not be negative", "beta minutes warmup sample_every ckpt_every")]:
        problems += [(getattr(cfg, k) < least, f"--{k.replace('_', '-')} must {must}")
                     for k in names.split()]
    bad = [message for is_bad, message in problems if is_bad]
    if bad:
        fail(bad[0])


def fail(message):
    """Stop with one line on stderr naming the problem and the fix (exit status 1)."""
    sys.exit(f"vae.py: {message}")


def writable_or_fail(out, ckpt_path=None):
    """Make the output folder and try writing there (and at the checkpoint's path): a path that
    cannot be written stops the run now, with one line, and not after the work is done."""
    try:
        paths = [os.path.join(out, ".write_test")] + ([f"{ckpt_path}.tmp"] if ckpt_path else [])
        for path in paths:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            open(path, "wb").close()
            os.remove(path)
    except OSError as e:
        flags = "--out and --ckpt" if ckpt_path else "--out"
        fail(f"cannot write {e.filename} ({e.strerror}) -- pass a writable {flags}")


# --------------------------------------------------------------------------------------------------
# Data: uint8 [N, H, W, 3] held on the device, dequantised to floats in [-1, 1) a batch at a time.

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


def load_data(cfg, heldout=False):
    """Training or held-out images: cartoons with seed 0 or 1; with --data, a fixed split of it."""
    which = "held-out" if heldout else "training"
    if not cfg.data:
        import cartoons  # only the built-in data needs it
        n, seed = (cfg.n_eval, 1) if heldout else (cfg.n_images, 0)
        print(f"drawing {n} cartoon faces at {cfg.image_size}x{cfg.image_size} (seed {seed})")
        return cartoons.make(n, cfg.image_size, seed=seed)
    if not os.path.isdir(cfg.data):
        fail(f"--data {cfg.data}: no such folder -- pass a folder of png/jpg/webp/bmp images")
    images, skipped = load_folder(cfg.data, cfg.image_size)
    n_out = math.ceil(cfg.holdout * len(images))  # the split depends on the folder, not --seed
    images = images[np.random.default_rng(0).permutation(len(images))]
    images = images[:n_out][:cfg.n_eval] if heldout else images[n_out:]
    print(f"{len(images)} {which} images from {cfg.data} ({skipped} unreadable, skipped)")
    if len(images) == 0:
        fail(f"--data {cfg.data}: no {which} images -- pass a folder with more "
             f"{'/'.join(e[1:] for e in IMAGE_EXTS)} files, or change --holdout")
    return images


def dequantize(x, generator=None):
    """uint8 [B, H, W, 3] -> s = (x + u) / 128 - 1, u ~ U[0, 1): float [B, 3, H, W] in [-1, 1)."""
    u = torch.rand(x.shape, device=x.device, generator=generator)
    return ((x.float() + u) / 128 - 1).permute(0, 3, 1, 2)  # NHWC storage: already channels_last


# --------------------------------------------------------------------------------------------------
# Model


def group_norm(ch):
    return nn.GroupNorm(math.gcd(32, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a skip connection (unet.py's block without time input)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            group_norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


class VAE(nn.Module):
    """Encoder x [B, 3, S, S] -> (mu, logvar) [B, Z]; decoder z [N, Z] -> mean(z) [N, 3, S, S].
    Each level halves (encoder) or doubles (decoder) the side: 64 -> 4 px at the defaults."""

    def __init__(self, cfg):
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        r = cfg.image_size // 2 ** len(chs)  # side at the bottom
        enc = [nn.Conv2d(3, chs[0], 3, padding=1)]
        for c_in, c_out in zip(chs[:1] + chs[:-1], chs):
            enc += [ResBlock(c_in, c_out), nn.Conv2d(c_out, c_out, 3, stride=2, padding=1)]
        self.encoder = nn.Sequential(*enc, group_norm(chs[-1]), nn.SiLU(), nn.Flatten(),
                                     nn.Linear(chs[-1] * r * r, 2 * cfg.z_dim))
        dec = [nn.Linear(cfg.z_dim, chs[-1] * r * r), nn.Unflatten(1, (chs[-1], r, r))]
        for c_in, c_out in zip(chs[::-1], chs[-2::-1] + chs[:1]):
            dec += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_in, 3, padding=1),
                    ResBlock(c_in, c_out)]
        self.decoder = nn.Sequential(*dec, group_norm(chs[0]), nn.SiLU(),
                                     nn.Conv2d(chs[0], 3, 3, padding=1))
        # sigma starts near the error of a blurry reconstruction, as Adam moves it only ~lr a step
        self.log_sigma = nn.Parameter(torch.full((3,), math.log(0.1)))

    def encode(self, x):
        """mu, logvar of q(z|x), float32 [B, Z] each."""
        return self.encoder(x).float().chunk(2, dim=1)

    def decode(self, z):
        return self.decoder(z).float()

    def forward(self, x):
        """(recon, kl) [B] of the ELBO at one z per image: what training differentiates."""
        mu, logvar = self.encode(x)
        return elbo(partial(log_px_given_z, self, x), mu, logvar, torch.randn_like(mu))


# --------------------------------------------------------------------------------------------------
# The math of the VAE: plain functions of tensors, vectors on the last dimension.


def log_normal(x, mean, log_sigma):
    """log N(x; mean, diag exp(log_sigma)^2), summed over the last dimension."""
    log_sigma = torch.as_tensor(log_sigma, dtype=x.dtype, device=x.device)
    return (-0.5 * ((x - mean) * torch.exp(-log_sigma)) ** 2 - log_sigma
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)), closed form (VAE App. B)."""
    # -D_KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)
    return -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1)


def reparameterize(mu, logvar, eps):
    """z = mu + sigma eps with sigma = exp(logvar / 2): a draw from q(z|x) (VAE Sec. 2.4)."""
    return mu + torch.exp(0.5 * logvar) * eps


def elbo(log_px, mu, logvar, eps):
    """(recon, kl): ELBO = recon - kl = log p(x|z) - KL(q(z|x) || p(z)), z from eps (VAE Eq. 7, 10).
    log_px: z [..., B, Z] -> log p(x|z) [..., B]; recon is unbiased for E_q log p(x|z)."""
    return log_px(reparameterize(mu, logvar, eps)), gaussian_kl(mu, logvar)


def iwae_bound(log_px, mu, logvar, eps):
    """log 1/K sum_k p(x, z_k) / q(z_k|x), z_k = mu + sigma eps_k, eps [K, B, Z] (IWAE Sec. 3).
    A lower bound on log p(x) that rises with K (IWAE Thm. 1); at K = 1, VAE Eq. 6."""
    z = reparameterize(mu, logvar, eps)
    log_w = log_px(z) + log_normal(z, 0, 0) - log_normal(z, mu, 0.5 * logvar)  # [K, B]
    return torch.logsumexp(log_w, dim=0) - math.log(eps.shape[0])


def log_px_given_z(model, x, z):
    """log p(s|z) [..., B] of images x [B, 3, H, W] in the units of s, for z [..., B, Z]."""
    mean = model.decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
    log_sigma = model.log_sigma.float().repeat_interleave(x[0, 0].numel())  # [D], channel-major
    return log_normal(x.flatten(1), mean, log_sigma)


def bits_per_dim(nats, D):
    """-log p(s) in nats -> bits/dim of y = 128 (s + 1) in [0, 256)^D: adds log 128 per dim."""
    return (nats / D + math.log(128)) / math.log(2)


# --------------------------------------------------------------------------------------------------
# Training


def load_checkpoint(path, given):
    """A vae.py checkpoint and its config, with the flags given on this command line on top."""
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path} -- train one with `python vae.py --train` or pass "
             "--ckpt PATH")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{path} is not a readable checkpoint ({type(e).__name__}) -- it may be truncated or "
             "not a PyTorch file; retrain or pass another --ckpt")
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind != "vae":
        fail(f"{path} is {f'a {kind} checkpoint' if kind else 'no checkpoint of this repository'},"
             " not a vae.py one -- pass a checkpoint written by `python vae.py --train`")
    known = {f.name for f in fields(Config)}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()
             if k in known}
    return ckpt, replace(Config(**saved), **given)


def pick_device(rank=0):
    if torch.cuda.is_available():
        return torch.device("cuda", rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    print("no CUDA GPU: running on the CPU, which is slow -- a smoke run: --image-size 32 --ch 16")
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
    """Linear warm-up, then cosine decay to 0 at progress = 1 (of --steps, or of --minutes)."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def clock_progress(seconds, budget, ready, at_ready):
    """How far a --minutes run's LR schedule is after `seconds` of its `budget` (both in seconds).
    The first step compiles the network, so the schedule waits for it: from `ready`, the clock
    reading when that step was done (None before), it runs from `at_ready` to 1 over the time
    that is left."""
    if ready is None:
        return at_ready
    return min(1.0, at_ready + (1 - at_ready) * (seconds - ready) / max(budget - ready, 1e-9))


def make_trainer(cfg, device, world=1):
    """The model, its optimizer and one training step (compiled on CUDA; the model is saved).
    With world > 1 each process takes cfg.batch / world images and DDP averages the gradients."""
    cuda, batch = device.type == "cuda", cfg.batch // world
    model = VAE(cfg).to(device, memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its convolutions once
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=cuda)
    net = DistributedDataParallel(model) if world > 1 else model  # it syncs the initial weights
    net = torch.compile(net) if cfg.compile and cuda else net

    def step(data, lr, beta):
        """Minimise (beta kl - recon) / D averaged over images; returns the batch's (-ELBO, KL)."""
        for g in opt.param_groups:
            g["lr"] = lr
        s = dequantize(data[torch.randint(len(data), (batch,), device=device)])
        if cfg.flip:  # mirror each image with probability 1/2
            s = torch.where(torch.rand(batch, 1, 1, 1, device=device) < 0.5, s.flip(3), s)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):  # around the network only
            recon, kl = net(s)
        ((beta * kl - recon).mean() / (3 * cfg.image_size ** 2)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return torch.stack([(kl - recon).mean(), kl.mean()]).detach()

    return model, opt, step


def train(cfg, ckpt_path, state=None):
    """Maximise the ELBO with AdamW (VAE Alg. 1); state: a checkpoint to continue from."""
    rank, local_rank, world = distributed()
    if cfg.batch % world:
        fail(f"--batch {cfg.batch} must divide evenly over the {world} processes")
    device = pick_device(local_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    data = torch.from_numpy(load_data(cfg)).to(device)  # uint8, NHWC, on the device
    model, opt, train_step = make_trainer(cfg, device, world)
    step, seconds = 0, 0.0
    if state:
        try:
            model.load_state_dict(state["model"])
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
          f"{sum(p.numel() for p in model.parameters()):,} parameters, batch {cfg.batch}")
    if rank == 0:
        writable_or_fail(cfg.out, ckpt_path)
    stem = os.path.join(cfg.out, os.path.splitext(os.path.basename(ckpt_path))[0])

    def finite_or_stop():
        """The host sync: the losses summed since the last log are NaN if any step's was."""
        if world > 1:  # every process sees the same means, so all stop or none
            dist.all_reduce(stats)
            stats.div_(world)
        neg_elbo, kl = (stats / max(step - step_last, 1)).tolist()
        if not math.isfinite(neg_elbo + kl):
            print()
            fail(f"the loss became {neg_elbo} near step {step}; stopped without saving, so "
                 f"{ckpt_path} keeps the last good state -- lower --lr, then --resume")
        return neg_elbo, kl

    def checkpoint():
        """Atomic: torch.save to a temporary file, then rename, so a crash keeps the old file."""
        finite_or_stop()  # never save a state that went NaN
        if rank:
            return
        rng = dict(rng_cuda=torch.cuda.get_rng_state()) if device.type == "cuda" else {}
        with open(f"{ckpt_path}.tmp", "wb") as f:
            torch.save(dict(kind="vae", config=asdict(cfg), model=model.state_dict(),
                            opt=opt.state_dict(), step=step, seconds=time.time() - t_start,
                            rng_cpu=torch.get_rng_state(), **rng), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f"{ckpt_path}.tmp", ckpt_path)

    budget, cr, start = cfg.minutes * 60, "\r" if sys.stdout.isatty() else "", step
    t_start = time.time() - seconds  # the clock includes earlier runs of a resumed training
    if world > 1:  # rank 0's clock for all, so that every process takes the same LR at each step
        clock = torch.tensor([t_start], dtype=torch.float64, device=device)
        dist.broadcast(clock, 0)
        t_start = clock.item()
    t_last, step_last, stats = time.time(), step, torch.zeros(2, device=device)
    # The clock reading when this run's first step (the compile) was done, and the schedule's
    # progress then: 0, or for a resumed run the share of the budget used.
    ready, at_ready = None, min(1.0, seconds / budget) if budget else 0.0
    stop = []  # Ctrl-C finishes the step in flight, then saves; a second one stops at once
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
        stats += train_step(data, lr, cfg.beta)
        step += 1
        if step == start + 1:  # the first step compiled
            ready = time.time() - t_start
        if step % cfg.log_every == 0:
            neg_elbo, kl = finite_or_stop()
            now = time.time()
            rate = (step - step_last) * cfg.batch / (now - t_last)  # over the last interval
            stats, t_last, step_last, seconds = stats.zero_(), now, step, now - t_start
            left = budget - seconds if budget else (cfg.steps - step) * cfg.batch / rate
            sigma = 128 * model.log_sigma.exp().mean().item()  # in pixel levels of 0..255
            print(f"{cr}step {step}{'' if budget else f'/{cfg.steps}'} | -ELBO "
                  f"{bits_per_dim(neg_elbo, 3 * cfg.image_size ** 2):.4f} bits/dim | KL "
                  f"{kl:.1f} nats | sigma {sigma:.1f} levels | lr {lr:.2e} | {rate:,.0f} "
                  f"img/s | {fmt_time(seconds)} | ETA "
                  f"{fmt_time(left)}  ",
                  end="" if cr else "\n", flush=True)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            checkpoint()
        if cfg.sample_every and step % cfg.sample_every == 0 and rank == 0:
            write_grid(sample(model, 64, cfg, device), f"{stem}_train_step{step:07d}.png")
    if main_thread:
        for s, handler in previous.items():
            signal.signal(s, handler)
    checkpoint()
    if world > 1:
        dist.barrier()  # no process ends while rank 0 is still writing
    if stop:
        print(f"\ninterrupted at step {step}: saved {ckpt_path}; continue with --resume")
        sys.exit(130)
    if rank == 0:
        write_grid(sample(model, 64, cfg, device), f"{stem}_train_step{step:07d}.png")
    print(f"\ndone: {step} steps in {fmt_time(time.time() - t_start)}; wrote {ckpt_path}")
    if world > 1:
        dist.destroy_process_group()


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------------------------------
# Pictures and likelihoods from a checkpoint, in float32


def to_uint8(s):
    """[N, 3, H, W] in the units of s -> uint8 [N, H, W, 3]: the bin y = 128 (s + 1) is in."""
    return (128 * (s.float() + 1)).floor().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


def write_grid(images, path, cols=8):
    """uint8 [N, H, W, 3] -> one PNG, tiled row by row with 2 px white gaps."""
    n, h, w, _ = images.shape
    canvas = np.full((-(-n // cols) * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = images[k]
    Image.fromarray(canvas).save(path)


@torch.no_grad()
def sample(model, n, cfg, device):
    """n images mean(z), z ~ p(z) = N(0, I), as uint8 [n, H, W, 3]."""
    gen = torch.Generator(device).manual_seed(cfg.seed)
    return np.concatenate([to_uint8(model.decode(torch.randn(
        min(cfg.sample_batch, n - i), cfg.z_dim, device=device, generator=gen)))
        for i in range(0, n, cfg.sample_batch)])


@torch.no_grad()
def pictures(mode, model, cfg, device):
    """The grid of --recon (rows of 8 held-out images above mean(mu(x))) or --interp (rows:
    image a, mean(z) for z on the line mu(a) -> mu(b), image b), and its columns."""
    x = load_data(replace(cfg, n_eval=min(cfg.n_eval, 32 if mode == "recon" else 16)), heldout=True)
    cols = min(8, len(x)) if mode == "recon" else 2
    if len(x) < cols:
        fail(f"--{mode} needs more held-out images -- raise --holdout or --n-eval")
    x = x[:len(x) // cols * cols]
    mu = model.encode(dequantize(torch.from_numpy(x).to(device),
                                 torch.Generator(device).manual_seed(cfg.seed)))[0]
    if mode == "recon":
        rec = to_uint8(model.decode(mu))
        return np.concatenate([np.concatenate([x[i:i + cols], rec[i:i + cols]])
                               for i in range(0, len(x), cols)]), cols
    t = torch.linspace(0, 1, 10, device=device)[None, :, None]
    mid = to_uint8(model.decode(((1 - t) * mu[0::2, None] + t * mu[1::2, None]).flatten(0, 1)))
    mid = mid.reshape(-1, 10, *x.shape[1:])  # [rows, 10, H, W, 3]
    strip = np.concatenate([x[0::2, None], mid, x[1::2, None]], axis=1)
    return strip.reshape(-1, *x.shape[1:]), 12


@torch.no_grad()
def evaluate(model, images, cfg, device, name):
    """Means and standard errors over images of -ELBO = recon + KL and -IWAE_K, in nats and
    bits/dim of y; recon at one z ~ q(z|x) per image."""
    gen = torch.Generator(device).manual_seed(cfg.seed)
    per, rows = max(1, cfg.sample_batch // cfg.iwae_k), []  # images per chunk: K decodes each
    for i in range(0, len(images), per):
        x = dequantize(torch.from_numpy(images[i:i + per]).to(device), gen)
        mu, logvar = model.encode(x)
        log_px = partial(log_px_given_z, model, x)
        recon, kl = elbo(log_px, mu, logvar, torch.randn(mu.shape, device=device, generator=gen))
        eps = torch.randn((cfg.iwae_k, *mu.shape), device=device, generator=gen)
        rows.append(torch.stack([recon, kl, iwae_bound(log_px, mu, logvar, eps)], 1).double().cpu())
        if sys.stdout.isatty():
            print(f"\revaluated {min(i + per, len(images))}/{len(images)}", end="", flush=True)
    r, D = torch.cat(rows), 3 * cfg.image_size ** 2  # [N, 3] in nats in the units of s
    print(f"\n{name}: {len(r)} held-out images; mean ± standard error over images. Dequantised "
          "y = x + u, so these bits/dim bound the 8-bit images' from above:")
    recon, kl, iwae = r[:, 0] - D * math.log(128), r[:, 1], r[:, 2] - D * math.log(128)
    for label, v in [("-ELBO = recon + KL", kl - recon), ("  recon: -log p(x|z)", -recon),
                     ("  KL(q(z|x) || p(z))", kl), (f"-IWAE (K={cfg.iwae_k})", -iwae),
                     ("IWAE - ELBO", iwae - recon + kl)]:
        m, se = v.mean().item(), v.std().item() / math.sqrt(len(v))
        print(f"  {label:<22} {m:10.2f} ± {se:6.2f} nats   {m / D / math.log(2):.4f} ± "
              f"{se / D / math.log(2):.4f} bits/dim")


# --------------------------------------------------------------------------------------------------
# Benchmark: what one training step costs on this machine.


def bench(cfg):
    from torch.utils.flop_counter import FlopCounterMode
    device = pick_device()
    cuda, sync = device.type == "cuda", getattr(torch, device.type).synchronize  # cuda, mps, cpu

    def seconds_per_call(fn, reps, warmup=3):
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps

    print(f"bench on {torch.cuda.get_device_name() if cuda else device.type}, torch "
          f"{torch.__version__}, compile={cfg.compile}, batch {cfg.batch}, {cfg.image_size}px")
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)  # MFU's base: a matmul
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    peak = 2 * n ** 3 / seconds_per_call(lambda: a @ b, reps=20)
    torch.manual_seed(cfg.seed)
    data = torch.randint(0, 256, (1024, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                         device=device)
    model, opt, train_step = make_trainer(cfg, device)
    with FlopCounterMode(display=False) as counter:  # conv and matmul FLOPs of one step
        recon, kl = model(dequantize(data[:cfg.batch]))
        (kl - recon).mean().backward()
    model.zero_grad(set_to_none=True)
    flops, step = counter.get_total_flops(), lambda: train_step(data, cfg.lr, cfg.beta)
    print(f"first step (compile) {seconds_per_call(step, reps=1, warmup=0):.1f} s")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dt = seconds_per_call(step, reps=50 if cuda else 2, warmup=5 if cuda else 1)
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    print(f"model          {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{flops / cfg.batch / 3e9:.2f} GFLOP per image forward (flop_counter; training = 3x)")
    print(f"matmul peak    {peak / 1e12:.1f} TFLOP/s measured ({'bf16' if cuda else 'fp32'})")
    print(f"training       {cfg.batch / dt:,.0f} img/s, {dt * 1e3:.1f} ms/step, "
          f"{flops / dt / 1e12:.1f} TFLOP/s, MFU {flops / dt / peak:.1%}, "
          f"peak memory {mem:.1f} GiB")


# --------------------------------------------------------------------------------------------------
# Command line: --train | --sample | --recon | --interp | --eval | --bench, and every Config field.


def int_tuple(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: sys.exit(f"vae.py: {message} -- see python vae.py --help")
    mode = p.add_mutually_exclusive_group(required=True)
    for name, text in [("train", "train (writes --ckpt, grids in --out)"),
                       ("sample", "--n images from the prior into --out"),
                       ("recon", "held-out images above their reconstructions"),
                       ("interp", "latent interpolations between held-out images"),
                       ("eval", "held-out -ELBO and IWAE bound"),
                       ("bench", "time a training step")]:
        mode.add_argument(f"--{name}", action="store_true", help=text)
    p.add_argument("--ckpt", default="vae.pt", help="checkpoint path (default: vae.pt)")
    p.add_argument("--resume", action="store_true", help="with --train: continue --ckpt")
    for f in fields(Config):
        kind = {bool: None, tuple: int_tuple}.get(type(f.default), type(f.default))
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        extra = dict(action=argparse.BooleanOptionalAction) if kind is None else dict(type=kind)
        p.add_argument(f"--{f.name.replace('_', '-')}", default=argparse.SUPPRESS,
                       help=f"{f.metadata['help']} (default: {shown})", **extra)
    args = p.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if args.resume and not args.train:
        fail("--resume goes with --train")
    ckpt, cfg = None, replace(Config(), **given)
    if args.resume or not (args.train or args.bench):
        ckpt, cfg = load_checkpoint(args.ckpt, given)
    check_config(cfg)
    if args.bench:
        return bench(cfg)
    if args.train and not args.resume and os.path.exists(args.ckpt):
        fail(f"{args.ckpt} exists -- add --resume to continue it, or --ckpt NEW.pt for a new run")
    if args.train:
        return train(cfg, args.ckpt, ckpt)
    device, model = pick_device(), VAE(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        fail(f"{args.ckpt}: its weights do not fit its config ({str(e).splitlines()[0][:100]}) -- "
             "do not pass network flags with --sample, --recon, --interp or --eval")
    model = model.to(device, memory_format=torch.channels_last).eval()
    mode = next(m for m in ("sample", "recon", "interp", "eval") if getattr(args, m))
    stem = os.path.splitext(os.path.basename(args.ckpt))[0]
    name = f"{stem}_step{ckpt['step']}_{mode}_seed{cfg.seed}"
    writable_or_fail(cfg.out)
    if mode == "eval":
        return evaluate(model, load_data(cfg, heldout=True), cfg, device, name)
    images, cols = (sample(model, cfg.n, cfg, device), 8) if mode == "sample" else \
        pictures(mode, model, cfg, device)
    write_grid(images[:64] if mode == "sample" else images, f"{cfg.out}/{name}.png", cols)
    print(f"wrote {cfg.out}/{name}.png")
    if mode == "sample" and cfg.n > 64:
        os.makedirs(f"{cfg.out}/{name}_n{cfg.n}", exist_ok=True)
        for k, im in enumerate(images):
            Image.fromarray(im).save(f"{cfg.out}/{name}_n{cfg.n}/{k:06d}.png")
        print(f"wrote {cfg.n} PNGs to {cfg.out}/{name}_n{cfg.n}")


if __name__ == "__main__":
    main()
