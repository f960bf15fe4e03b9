"""Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020, arXiv 2006.11239v2).

Trains the U-Net of unet.py on cartoon faces (or your images), keeps an EMA of its weights and
samples by Algorithm 2; with --cond on class labels, guided (Classifier-Free Diffusion Guidance,
Ho & Salimans 2022, arXiv 2207.12598: CFG). It predicts v (Salimans & Ho 2022), not eps: errors in
eps, amplified by 1/sqrt(abar_t) at high noise, speckle ddim.py's samples (README).

    python ddpm.py --train                         # built-in cartoons, 64x64 (no GPU: CPU_RECIPE)
    python ddpm.py --train --minutes 6             # as many steps as fit in 6 minutes
    python ddpm.py --sample --ckpt ddpm.pt         # grid and denoising GIF (--n 5000: PNGs too)
    python ddpm.py --train --cond                  # one class per hair colour (or --data subfolder)
    torchrun --standalone --nproc_per_node=2 ddpm.py --train   # the same on 2 GPUs (DDP)

Notation (code -> paper). Code t = 0..T-1 is the paper's t = 1..T (t = 0: one step of noise).
    betas[t], alphas[t] beta_t, alpha_t     variance of forward step t, alpha_t = 1 - beta_t
    alphas_cumprod[t]   abar_t = prod_{s <= t} alpha_s; abar_prev: the next step's (1 at t = -1)
    x0, eps, x_t        x_0, epsilon, x_t   data, noise, noised data
    v                   sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, 2202.00512)
    c, K, w             class label in 0..K-1 (K: "no label", CFG's null), guidance weight (CFG)
"""
import argparse
import copy
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from PIL import Image, ImageOps

from unet import UNet, guided

# --- Config: every field is a flag (--field-name); `ok`: the test it must pass --------------------
POSITIVE, AT_LEAST_1 = (lambda v: v > 0, "positive"), (lambda v: v >= 1, "at least 1")
NOT_NEGATIVE, SEED = (lambda v: v >= 0, "0 or more"), (lambda v: 0 <= v < 2 ** 31, "below 2^31")

def arg(default, help, ok=None, choices=None):
    return field(default=default, metadata=dict(help=help, ok=ok, choices=choices))

@dataclass
class Config:
    data: str = arg("", "folder of images (any size or mode); empty: the built-in cartoons")
    image_size: int = arg(64, "side of the square images", (lambda v: 8 <= v <= 1024, "8 to 1024"))
    n_images: int = arg(10_000, "built-in cartoon faces to draw (not with --data)", AT_LEAST_1)
    cond: bool = arg(False, "class labels: the cartoons' hair colour, or --data's subfolders")
    ch: int = arg(128, "base channel count of the U-Net", AT_LEAST_1)
    ch_mult: tuple = arg((1, 2, 2, 2), "channel multiplier per resolution level, comma-separated")
    num_res_blocks: int = arg(2, "residual blocks per level", AT_LEAST_1)
    attn_levels: tuple = arg((2, 3), "levels with self-attention (0: full resolution)")
    T: int = arg(1000, "diffusion steps (DDPM: 1000)", (lambda v: v >= 21, "21 or more"))
    schedule: str = arg("linear", "noise schedule (cosine: IDDPM)", None, ("linear", "cosine"))
    prediction: str = arg("v", "what the network predicts", None, ("eps", "x0", "v"))
    min_snr_gamma: float = arg(0.0, "min-SNR-gamma weights (Hang et al. 2023); 0 off", NOT_NEGATIVE)
    p_uncond: float = arg(0.1, "label dropout (CFG: 0.1-0.5)", (lambda v: 0 < v <= 1, "in (0, 1]"))
    steps: int = arg(8000, "optimizer steps", AT_LEAST_1)
    minutes: float = arg(0.0, "not --steps: what fits in this many (more) minutes", NOT_NEGATIVE)
    batch: int = arg(128, "training batch size", AT_LEAST_1)
    lr: float = arg(8e-4, "peak learning rate of AdamW (DDPM: 2e-4 for 800k steps)", POSITIVE)
    warmup: int = arg(300, "linear learning-rate warm-up steps", NOT_NEGATIVE)
    ema_halflife_kimg: float = arg(50.0, "EMA half-life in thousands of images (EDM)", NOT_NEGATIVE)
    flip: bool = arg(True, "random horizontal flips")
    compile: bool = arg(True, "torch.compile the network (CUDA only)")
    seed: int = arg(0, "random seed for training and sampling", SEED)
    log_every: int = arg(50, "steps between progress lines (each costs one host sync)", AT_LEAST_1)
    sample_every: int = arg(1000, "steps between sample grids; 0: only at the end", NOT_NEGATIVE)
    ckpt_every: int = arg(1000, "steps between checkpoints; 0: at the end, on Ctrl-C", NOT_NEGATIVE)
    n: int = arg(64, "images to sample; over 64 also writes each as a PNG (for FID)", AT_LEAST_1)
    sample_steps: int = arg(0, "ancestral steps, respaced (IDDPM Sec. 4); 0: T", NOT_NEGATIVE)
    guidance: float = arg(0.0, "with --cond: CFG's w", (lambda v: -1 <= v <= 100, "-1 to 100"))
    var: str = arg("small", "reverse variance: beta_tilde (Eq. 7) | beta", None, ("small", "large"))
    sample_batch: int = arg(256, "sampling batch size", AT_LEAST_1)
    out: str = arg("out", "folder for sample grids, GIFs and PNGs")

CPU_RECIPE = dict(image_size=24, n_images=4000, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                  attn_levels=(2,), batch=32, steps=2000, log_every=20, sample_every=0)

def fail(message):
    sys.exit(f"ddpm.py: {message}")  # one line on stderr naming the problem and the fix; exit 1

def check_config(cfg):
    for f in fields(cfg):
        v, ok = getattr(cfg, f.name), f.metadata["ok"]
        if ok and not (ok[0](v) and math.isfinite(v)):  # inf would pass v > 0
            fail(f"--{f.name.replace('_', '-')} {v}: must be a finite number, {ok[1]}")
    if min(cfg.ch_mult, default=0) < 1 or cfg.image_size % 2 ** (len(cfg.ch_mult) - 1):
        fail(f"--ch-mult {cfg.ch_mult}, --image-size {cfg.image_size}: the U-Net needs multipliers"
             f" of 1 or more and a size that is a multiple of {2 ** (len(cfg.ch_mult) - 1)}")
    if any(not 0 <= a < len(cfg.ch_mult) for a in cfg.attn_levels) or cfg.sample_steps > cfg.T:
        fail(f"--attn-levels must be in 0..{len(cfg.ch_mult) - 1}, --sample-steps in 0..T={cfg.T}")

# --- Data: uint8 [N, H, W, 3] on the device, made [-1, 1] floats a batch at a time ----------------
def load_folder(path, size):
    """Readable images under path as uint8 [size, size, 3] arrays, centre-cropped to a square and
    resized with an antialiasing filter; also how many could not be read, and their folders."""
    images, skipped, folders = [], 0, []
    for name in sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp"))):
        try:
            with Image.open(name) as im:
                if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: keep the top 8 bits
                    im = Image.fromarray((np.asarray(im) / 257).clip(0, 255).astype(np.uint8))
                im = im.convert("RGBA")  # transparency (RGBA, LA, P) is composited onto white
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), im)
                im = ImageOps.fit(im.convert("RGB"), (size, size), Image.LANCZOS)  # centre square
                images.append(np.asarray(im))
                folders.append(os.path.relpath(os.path.dirname(name), path).split(os.sep)[0])
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped += 1
    return images, skipped, folders  # and each image's top subfolder under path (".": none)

def load_data(cfg):  # images uint8 [N, H, W, 3], labels int64 [N], the class names they index
    if not cfg.data:
        import cartoons  # only the built-in data needs it
        print(f"drawing {cfg.n_images} cartoon faces at {cfg.image_size}x{cfg.image_size}")
        return *cartoons.make(cfg.n_images, cfg.image_size, 0, labels=True), cartoons.HAIR_CLASSES
    images, skipped, folders = load_folder(cfg.data, cfg.image_size)
    if not images:
        fail(f"--data {cfg.data}: " + (f"no readable images ({skipped} unreadable)" if
             os.path.isdir(cfg.data) else "no such folder") + " -- pass a folder of images")
    if cfg.cond and ("." in folders or len(set(folders)) < 2):  # the ImageFolder convention
        fail(f"--cond: {cfg.data} needs its images in subfolders, one per class (2 or more)")
    print(f"loaded {len(images)} images from {cfg.data} ({skipped} unreadable, skipped)")
    names, labels = np.unique(folders, return_inverse=True)  # sorted names, each image's index
    return np.stack(images), labels, names.tolist()

def get_batch(data, batch, flip, labels=None):
    """A random batch of uint8 [N, H, W, 3] -> float [B, 3, H, W] in [-1, 1], and its labels."""
    i = torch.randint(len(data), (batch,), device=data.device)
    x = data[i].permute(0, 3, 1, 2).float() / 127.5 - 1  # NHWC storage: already channels_last
    flips = torch.rand(batch, 1, 1, 1, device=x.device) < 0.5 * flip
    return torch.where(flips, x.flip(3), x), None if labels is None else labels[i]

# --- Model: unet.py's U-Net, run in bf16 on CUDA --------------------------------------------------
def build_model(cfg, num_classes=0):
    return UNet(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                attn_levels=cfg.attn_levels, num_classes=num_classes)

def autocast(device):  # bf16 around the network on CUDA, a no-op elsewhere
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

def pick_device():
    if torch.cuda.is_available():  # fixed shapes: let cuDNN time its conv algorithms
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = True
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")

# --- The math of DDPM: schedules in float64, cast once to float32; x is [B, C, H, W] --------------
def make_schedule(name, T, device="cpu"):
    """betas, alphas, alphas_cumprod as float32 tensors [T] (DDPM Sec. 4; IDDPM Eq. 17)."""
    if name == "linear":  # beta 1e-4 to 0.02 (DDPM Sec. 4) x 1000 / T: any T > 20, one shape
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    else:  # abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), beta <= 0.999 (IDDPM Eq. 17)
        s = 0.008
        f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    tables = dict(betas=betas, alphas=1 - betas, alphas_cumprod=np.cumprod(1 - betas))
    return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in tables.items()}

def abar_at(sched, t):  # abar_t for integer t [B], and abar_{-1} = 1: no noise before step 0
    abar = sched["alphas_cumprod"].to(t.device)
    return torch.where(t >= 0, abar[t.clamp(min=0)], torch.ones((), device=t.device))

def bcast(a, x):  # [B] -> [B, 1, 1, 1], to broadcast a per-sample scalar over an image batch
    return a.view(-1, *([1] * (x.dim() - 1)))

def q_sample(sched, x0, t, eps):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, a draw from q(x_t | x_0) (DDPM Eq. 4)."""
    abar = bcast(abar_at(sched, t), x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

def posterior(x0, x_t, abar_t, abar_prev):
    """Mean and variance of q(x_prev | x_t, x0) (DDPM Eqs. 6-7), for any earlier step prev.
    With alpha = abar_t / abar_prev and beta = 1 - alpha (one step: alpha_t and beta_t):
    mean = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t,
    var = beta_tilde = (1 - abar_prev) / (1 - abar_t) beta.    abar_t, abar_prev: [B, 1, 1, 1]."""
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
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 and Eq. 4 solved for x0 and eps:
    return abar.sqrt() * x_t - (1 - abar).sqrt() * out, (1 - abar).sqrt() * x_t + abar.sqrt() * out

def training_target(prediction, x0, eps, abar):
    """What the network learns to output: eps (DDPM Eq. 14), x0, or v (Salimans & Ho Sec. 4)."""
    return {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]

def loss_weight(prediction, abar, gamma):
    """Min-SNR-gamma weights: min(snr, gamma) / snr in eps units (Hang et al. 2023, Eqs. 8-9),
    min(snr, gamma) in x0 units, min(snr, gamma) / (snr + 1) in v units; all 1 when gamma is 0."""
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=gamma) / {"eps": snr, "x0": 1, "v": snr + 1}[prediction]
    return weight if gamma else torch.ones_like(abar)

def diffusion_loss(model, sched, x0, cfg, c=None, K=0):
    """L_simple: || target - net(x_t, t, c) ||^2, t uniform, eps ~ N(0, I) (DDPM Eq. 14, Alg. 1);
    labels c [B] in 0..K-1 or None, each made K ("no label") with prob. p_uncond (CFG Alg. 1)."""
    t, eps = torch.randint(cfg.T, (x0.shape[0],), device=x0.device), torch.randn_like(x0)
    if c is not None:  # one network learns eps(x, c) and eps(x, none)
        c = c.masked_fill(torch.rand(c.shape, device=c.device) < cfg.p_uncond, K)
    with autocast(x0.device):
        out = model(q_sample(sched, x0, t, eps), t, c)
    abar = abar_at(sched, t)
    target = training_target(cfg.prediction, x0, eps, bcast(abar, x0))
    mse = (out.float() - target).square().mean(dim=(1, 2, 3))
    return (loss_weight(cfg.prediction, abar, cfg.min_snr_gamma) * mse).mean()

def timesteps(T, steps):
    """steps steps from T-1 down to 0, t_i = floor((T-1)(S-1-i)/(S-1) + 1/2) in exact integers;
    all T when steps == T (IDDPM Sec. 4). ddim.py's uniform spacing is the same list."""
    S = max(steps - 1, 1)
    return torch.tensor([((T - 1) * (S - i) * 2 + S) // (2 * S) for i in range(steps)])

@torch.no_grad()
def sample(model, sched, shape, cfg, device, gen=None, clip=True, record=None, c=None):
    """Ancestral sampling, Algorithm 2: x_T ~ N(0, I), then x_prev ~ p(x_prev | x_t) down to x_0:
    x0 from the network (guided for labels c [B], CFG Alg. 2), clipped to [-1, 1] for images, the
    posterior mean (Eq. 7), beta_tilde or beta, no noise at the end. record {i: None}: x_t, x0."""
    x, t_print = torch.randn(shape, device=device, generator=gen), time.time()
    ts = timesteps(cfg.T, cfg.sample_steps or cfg.T).tolist()
    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
        if time.time() - t_print > 5:  # slow devices: a line every 5 s, never silent for long
            t_print = print(f"  sampling: step {i}/{len(ts)}", flush=True) or time.time()
        tt = torch.full((shape[0],), t, device=device)
        abar_t = bcast(abar_at(sched, tt), x)
        abar_prev = bcast(abar_at(sched, torch.full_like(tt, t_prev)), x)
        with autocast(device):
            out = model(x, tt) if c is None else guided(model, x, tt, c, cfg.guidance)
        x0, _ = split_prediction(cfg.prediction, out.float(), x, abar_t)
        x0 = x0.clamp(-1, 1) if clip else x0
        mean, var = posterior(x0, x, abar_t, abar_prev)
        var = 1 - abar_t / abar_prev if cfg.var == "large" else var  # large: sigma_t^2 = beta_t
        if record is not None and i in record:
            record[i] = (x[:16].clone(), x0[:16].clone())
        noise = torch.randn(shape, device=device, generator=gen) if t_prev >= 0 else 0
        x = mean + var.sqrt() * noise
    return x

# --- Training: Algorithm 1 in nanoGPT's shape, and its checkpoints --------------------------------
def learning_rate(cfg, step, total):  # linear warm-up, then a cosine decay to 0 at step total
    decay = 0.5 * (1 + math.cos(math.pi * min(step / total, 1)))
    return cfg.lr * min(1, (step + 1) / max(cfg.warmup, 1)) * decay

def ema_beta(cfg, nimg):
    """Decay per step for a half-life of ema_halflife_kimg, at most 10% of nimg (EDM App. F)."""
    return 0.5 ** (cfg.batch / max(min(cfg.ema_halflife_kimg * 1000, 0.1 * nimg), 1e-8))

def compile_for_training(net, cuda_graphs):
    """torch.compile, every activation channels_last (else Inductor keeps some decoder convs NCHW,
    and cuDNN's backward copies them) and CUDA graphs (~1,100 launches a step bind the CPU)."""
    torch.backends.cuda.enable_cudnn_sdp(False)  # bf16 backward NaNs reported (README: Usage)
    return torch.compile(net, options={"force_layout_optimization": True,
                                       "triton.cudagraphs": cuda_graphs})

def train(cfg, path, state=None):
    """Algorithm 1 with AdamW, an EMA and checkpoints; state: a checkpoint to continue from."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:  # under torchrun: one process per GPU (or CPU); rank 0 alone logs and writes
        local, gpus = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if 0 < gpus < int(os.environ["LOCAL_WORLD_SIZE"]):  # rank 0 says so, the others go quietly
            sys.exit(1 if local else f"ddpm.py: torchrun started more processes than the {gpus} "
                     f"GPU(s) here -- pass --nproc_per_node={gpus}")
        if cfg.batch % world:
            fail(f"--batch {cfg.batch} must divide evenly over the {world} processes")
        if gpus:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl" if gpus else "gloo")
        sys.stdout = open(os.devnull, "w") if rank else sys.stdout
    device = pick_device()
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    images, labels, names = load_data(cfg)
    data, K = torch.from_numpy(images).to(device), len(names) * cfg.cond  # uint8 NHWC; classes
    classes = dict(zip(names, np.bincount(labels, minlength=K).tolist())) if K else {}  # ddim.py
    labels = torch.from_numpy(labels).to(device) if K else None
    model = build_model(cfg, K).to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    cuda, step = device.type == "cuda", state["step"] if state else 0
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=cuda)  # DDPM: Adam
    modules = dict(model=model, ema=ema, opt=opt)  # what a checkpoint holds, with the RNG states
    if state:  # weights, optimizer and random state: as if it had never stopped
        state["opt"]["param_groups"][0]["fused"] = cuda  # this device's: fused moves Adam's step
        restore(state, modules, path)
        if list(state.get("classes", {})) != list(classes):  # renamed folders: labels swapped
            fail(f"{path} learned other classes: {', '.join(state['classes'])} -- resume on those")
    if world > 1:  # each process draws its own data and noise
        torch.manual_seed(cfg.seed + 1_000_003 * (rank + 1) + step)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model  # syncs weights
    compiled, graphs = cfg.compile and cuda, cfg.compile and cuda and world == 1  # not with DDP
    net = compile_for_training(net, graphs) if compiled else net
    sched = make_schedule(cfg.schedule, cfg.T, device)
    quick = replace(cfg, sample_steps=min(100, cfg.sample_steps or cfg.T))  # for the grids
    grids = f"{cfg.out}/{os.path.splitext(os.path.basename(path))[0]}_train_step"  # named as --ckpt
    print(f"training on {world} x {device.type} from step {step}: {len(data)} images, "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M parameters" + ", compiling" * compiled)
    stop = []  # Ctrl-C: finish the step in flight, save, exit; a second Ctrl-C stops at once
    previous = signal.signal(signal.SIGINT, lambda *_: on_ctrl_c(stop, world))
    start, total = step, max(cfg.steps, step + 13) if cfg.minutes else cfg.steps  # until planned
    if step >= total:
        fail(f"{path} is at step {step} already -- pass a larger --steps, or --minutes")
    loss_sum, t0 = torch.zeros((), device=device), time.time()
    t_last, step_last, t_plan = t0, step, t0
    while step < total:
        if graphs:  # a new step: the graphs may overwrite the last step's outputs (all used)
            torch.compiler.cudagraph_mark_step_begin()
        lr = opt.param_groups[0]["lr"] = learning_rate(cfg, step, total)  # the LR by step
        x0, c = get_batch(data, cfg.batch // world, cfg.flip, labels)
        loss = diffusion_loss(net, sched, x0, cfg, c, K)
        loss.backward()  # under DDP the gradients arrive averaged over processes
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # as DDPM
        opt.step()
        opt.zero_grad(set_to_none=True)
        beta = ema_beta(cfg, step * cfg.batch)
        torch._foreach_lerp_(ema_params, params, 1 - beta)  # ema <- beta ema + (1 - beta) theta
        loss_sum += loss.detach() + 0 * norm  # a NaN or inf gradient makes the checked loss NaN
        step += 1
        if cfg.minutes and step - start in (3, 13):  # time 10 compiled steps, plan what fits
            loss_sum.item()  # a host sync: the GPU has run the steps queued so far
            if step - start == 13:  # rank 0's plan for all, so that all stop at the same step
                left, per_step = cfg.minutes * 60 - (time.time() - t0), (time.time() - t_plan) / 10
                plan = torch.tensor(step + max(0, int(left / per_step)), device=device)
                if world > 1:
                    torch.distributed.broadcast(plan, 0)
                total = int(plan)
            t_plan = time.time()
        log = step % cfg.log_every == 0 or step == start + 1 or step == total
        save = cfg.ckpt_every and step % cfg.ckpt_every == 0 or step == total
        grid = (cfg.sample_every and step % cfg.sample_every == 0 or step == total) and rank == 0
        if not (log or save or grid or (stop and world == 1)):
            continue
        mean = torch.stack([loss_sum / (step - step_last), torch.tensor(len(stop), device=device)])
        if world > 1:  # all see one loss and Ctrl-C: all stop
            torch.distributed.all_reduce(mean)
        loss_now, stopping = (mean / world).tolist()  # the host sync
        if not math.isfinite(loss_now):
            fail(f"the loss became {loss_now} near step {step}; {path} is intact -- lower --lr")
        if log:  # the first step compiles (CUDA): no rate from it
            rate = (step - step_last) * cfg.batch / (time.time() - t_last)
            left = (cfg.minutes * 60 - (time.time() - t0) if cfg.minutes and step - start < 13
                    else (total - step) * cfg.batch / rate)  # before the plan: the budget left
            speed = f"{rate:,.0f} img/s | ETA {left / 60:.1f} min"
            print(f"step {step}/{total} | loss {loss_now:.4f} | lr {lr:.2e} | "
                  f"{'compiling' if compiled and step == start + 1 else speed} | "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        loss_sum.zero_()
        if (save or stopping) and rank == 0:
            save_checkpoint(path, modules, replace(cfg, steps=total, minutes=0), step, classes)
        if stopping:
            print(f"stopped at step {step}: saved {path}; go on with --resume")
            sys.exit(130)
        if grid:
            write_samples(ema, quick, device, f"{grids}{step:07d}", 64)
        t_last, step_last = time.time(), step  # grids and saves stay out of the img/s
    signal.signal(signal.SIGINT, previous)
    print(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min; wrote {path}")
    if world > 1:
        torch.distributed.barrier()  # no process ends while rank 0 is still writing
        torch.distributed.destroy_process_group()

def on_ctrl_c(stop, world):
    if stop and world == 1:  # a second Ctrl-C (one process): stop now
        fail("stopped by a second Ctrl-C; the last checkpoint written is intact")
    stop.append(1)
    print("\nCtrl-C: finishing this step, then saving (Ctrl-C again to stop now)", flush=True)

def save_checkpoint(path, modules, cfg, step, classes):
    """Self-describing, via path.tmp renamed: a failed write (full disk, kill -9) keeps the last."""
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    state = dict(kind="ddpm", config=asdict(cfg), step=step, classes=classes, rng_cuda=cuda_rng,
                 rng_cpu=torch.get_rng_state(), **{k: m.state_dict() for k, m in modules.items()})
    try:
        with open(f"{path}.tmp", "wb") as f:
            torch.save(state, f)
            os.fsync(f.fileno())
        os.replace(f"{path}.tmp", path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError
        if os.path.exists(f"{path}.tmp"):
            os.remove(f"{path}.tmp")
        fail(f"could not write {path} ({str(e).splitlines()[0][:80]}) -- free some disk space or "
             "pass another --ckpt; the last checkpoint written, if any, is intact")

def load_checkpoint(path):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"no checkpoint at {path} -- train one with `python ddpm.py --train` or pass --ckpt"
             if not os.path.isfile(path) else f"{path} is not a readable checkpoint "
             f"({type(e).__name__}) -- it may be truncated; retrain or pass another --ckpt")
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind != "ddpm":
        fail(f"{path} is {f'a {kind} checkpoint' if kind else 'no checkpoint of this repository'},"
             " not a ddpm.py one -- pass a checkpoint written by `python ddpm.py --train`")
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if hasattr(Config, k)}  # old: more
    return ckpt

def restore(state, modules, path):  # module and random states, or one line if they don't fit
    try:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        torch.set_rng_state(state["rng_cpu"])  # under DDP, each process then reseeds
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
    except (RuntimeError, KeyError, ValueError) as e:
        fail(f"{path} does not fit ({str(e).splitlines()[0][:54]}) -- keep its flags, --cond too")

# --- Sampling: grids, the denoising GIF, and PNGs for FID -----------------------------------------
def to_uint8(x):  # float [-1, 1] [N, 3, H, W] -> uint8 [N, H, W, 3] on the CPU
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

def grid_image(x, cols=8):
    """uint8 [N, H, W, 3] -> one image of them in rows of cols, with 2 px white gaps."""
    x = np.pad(x, ((0, -len(x) % cols), (2, 0), (2, 0), (0, 0)), constant_values=255)
    n, h, w, _ = x.shape
    x = x.reshape(n // cols, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(n // cols * h, -1, 3)
    return Image.fromarray(np.pad(x, ((0, 2), (0, 2), (0, 0)), constant_values=255))

def write_samples(model, cfg, device, name, n):
    """n samples (with labels, a class in turn): 64 in name.png, the denoising GIF (frames
    denser at the end, where the details form) and, for n > 64, a PNG each (for FID)."""
    sched, steps = make_schedule(cfg.schedule, cfg.T, device), cfg.sample_steps or cfg.T
    gen, K = torch.Generator(device).manual_seed(cfg.seed), model.num_classes
    record = dict.fromkeys(np.unique((steps - np.geomspace(steps, 1, 40)).round().astype(int)))
    images, t0, batch = [], time.time(), min(cfg.sample_batch, n)  # one shape: full batches
    for i in range(0, n, batch):
        c = (i + torch.arange(batch, device=device)) % K if K else None  # image k: class k % K
        x = sample(model, sched, (batch, 3, cfg.image_size, cfg.image_size), cfg, device, gen,
                   record=record if i == 0 else None, c=c)
        images.extend(to_uint8(x[:n - i]))
        print(f"sampled {len(images)}/{n} ({time.time() - t0:.0f} s)", flush=True)
    grid_image(np.stack(images[:64])).save(f"{name}.png")
    frames = [Image.fromarray(np.hstack([grid_image(to_uint8(x), 4) for x in pair])).quantize(
        method=Image.Quantize.FASTOCTREE) for pair in record.values()]  # x_t | x_0; fast palette
    frames[0].save(f"{name}.gif", save_all=True, duration=80, loop=0,
                   append_images=frames[1:] + frames[-1:] * 12)  # hold the result for a second
    if n > 64:
        os.makedirs(f"{name}_n{n}", exist_ok=True)
        for k, im in enumerate(images):
            Image.fromarray(im).save(f"{name}_n{n}/{k:06d}.png")
    print(f"wrote {name}.png, {name}.gif" + f" and {n} PNGs in {name}_n{n}" * (n > 64))

def sample_main(cfg, ckpt, path):
    device, model = pick_device(), build_model(cfg, len(ckpt.get("classes", {})) * cfg.cond)
    restore(ckpt, dict(ema=model), path)
    model = model.to(device, memory_format=torch.channels_last).eval()
    net = torch.compile(model) if cfg.compile and device.type == "cuda" and cfg.n > 256 else model
    name = (f"{cfg.out}/{os.path.splitext(os.path.basename(path))[0]}_step{ckpt['step']}_{cfg.var}"
            f"{cfg.sample_steps or cfg.T}" + f"_w{cfg.guidance:g}" * cfg.cond + f"_seed{cfg.seed}")
    write_samples(net, cfg, device, name, cfg.n)  # w before seed, as ddim.py

# --- Command line: --train | --sample, and every Config field as a flag ---------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: sys.exit(f"ddpm.py: {message} -- see python ddpm.py --help")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (writes --ckpt, grids in --out)")
    mode.add_argument("--sample", action="store_true", help="sample from --ckpt into --out")
    p.add_argument("--ckpt", default="ddpm.pt", help="checkpoint path (ddpm.pt)")
    p.add_argument("--resume", action="store_true", help="with --train: continue --ckpt")
    tuples = lambda text: tuple(int(v) for v in text.split(",") if v.strip())  # noqa: E731
    kinds = {bool: dict(action=argparse.BooleanOptionalAction), tuple: dict(type=tuples)}
    for f in fields(Config):
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        p.add_argument(f"--{f.name.replace('_', '-')}", default=argparse.SUPPRESS,
                       **kinds.get(type(f.default), dict(type=type(f.default))),
                       choices=f.metadata["choices"], help=f"{f.metadata['help']} ({shown})")
    args = p.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    state = load_checkpoint(args.ckpt) if args.resume or args.sample else None
    cfg = replace(Config(**state["config"]) if state else Config(), **given)
    if args.train and not args.resume and not torch.cuda.is_available():
        cfg = replace(cfg, **(small := {k: v for k, v in CPU_RECIPE.items() if k not in given}))
        print(f"no CUDA GPU, so a small recipe: {small} -- flags you give override it")
    check_config(cfg)
    if cfg.guidance and not cfg.cond or args.sample and cfg.cond and not state.get("classes"):
        fail("--cond/--guidance: train with --cond, or sample a --ckpt trained with --cond")
    try:  # a folder that cannot be written stops the run now, not after hours of training
        for folder in [cfg.out] + [os.path.dirname(os.path.abspath(args.ckpt))] * args.train:
            os.makedirs(folder, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        fail(f"cannot write {e.filename} ({e.strerror}) -- pass a writable --out or --ckpt")
    if args.sample:
        return sample_main(cfg, state, args.ckpt)
    if not args.resume and os.path.exists(args.ckpt):
        fail(f"{args.ckpt} exists -- add --resume to continue it, or --ckpt NEW.pt for a new run")
    train(cfg, args.ckpt, state)

if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda *_: fail("stopped by Ctrl-C"))  # outside training: 1 line
    main()
