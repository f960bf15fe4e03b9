"""Auto-Encoding Variational Bayes (Kingma & Welling 2013, arXiv 1312.6114v11).

A convolutional VAE on cartoon faces (or your images): trains on the ELBO, samples from the prior,
reconstructs, interpolates, and reports the held-out -ELBO and IWAE bound in bits/dim.

    python vae.py --train [--data DIR]    # one GPU; writes vae.pt (at the end and on Ctrl-C)
    python vae.py --sample --n 5000       # a grid of 64 and 5000 single PNGs (for FID) in out/
    python vae.py --recon | --interp      # held-out images above reconstructions | latent strips
    python vae.py --eval                  # held-out -ELBO = recon + KL, and IWAE with K = 100

No CUDA GPU: --train defaults to CPU_RECIPE (32x32 faces, a 3.8M VAE), a laptop's run.

Likelihood. Pixels x in {0..255}^D, D = 3 H W, are dequantised, y = x + u, u ~ U[0, 1)^D, and the
networks see s = y / 128 - 1 in [-1, 1). p(s|z) = N(s; mean(z), diag sigma_c^2), one learned sigma
per colour channel c (sigma-VAE, Rybkin et al. 2020, arXiv 2006.13202). log p(y|z) = log p(s|z)
- D log 128 (dy = 128^D ds), and E_u log p(x + u) <= log P(x) by Jensen (Theis et al. 2016, arXiv
1511.01844, Sec. 3.1): the bits/dim printed, -log p(y) / (D ln 2), bound those of x from above.

Notation (code -> paper). Prior p(z) = N(0, I); q(z|x) = N(mu, diag exp(logvar)).
    mu, logvar     mu_phi(x), log sigma_phi(x)^2    encoder outputs, [B, Z] each
    eps, z         epsilon ~ N(0, I), z = mu + exp(logvar / 2) eps (the reparameterisation)
    log_sigma      log sigma_c of p(x|z), [3]; pictures show mean(z), not draws from p(x|z)
    recon, kl      log p(x|z) at one z ~ q(z|x); KL(q(z|x) || p(z)), closed form; ELBO = recon - kl
    K              importance samples of the IWAE bound (Burda et al. 2015, arXiv 1509.00519v4)
"""
import argparse
import math
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps

# --- Config: knobs few runs touch are constants; the rest are flags, `ok` the test they must pass -
CH_MULT = (1, 2, 4, 8)  # channel multiplier per level; each level halves the side: 64 -> 4 px
WARMUP = 200  # linear learning-rate warm-up steps, then a cosine to 0: Adam's moments settle first
GRAD_CLIP = 1.0  # gradient-norm clip: one odd batch cannot throw the weights far
FLIP = True  # random horizontal flips: faces are left-right symmetric (text or maps are not)
LOG_EVERY, CKPT_EVERY = 20, 1000  # steps between progress lines (a host sync each), checkpoints
HOLDOUT = 0.05  # with --data: the share of the folder kept out of training (at least 2 images)
N_EVAL, IWAE_K = 1000, 100  # --eval: held-out images (standard error ~0.05 bits/dim), K
DECODE_BATCH = 1024  # images decoded at once in --sample and --eval: bounds their memory
CPU_RECIPE = dict(image_size=32, n_images=4000, ch=32, z_dim=128, batch=64, steps=1200)  # no GPU
AT_LEAST_1, SIDE = (lambda v: v >= 1, "at least 1"), 2 ** len(CH_MULT)  # SIDE divides the side

def arg(default, help, ok=None):
    return field(default=default, metadata=dict(help=help, ok=ok))

@dataclass
class Config:
    data: str = arg("", "folder of images (any size or mode) to train on; empty: cartoons")
    image_size: int = arg(64, "side of the square images", (lambda v: 0 < v <= 1024 and v % SIDE
                          == 0, f"a multiple of {SIDE} up to 1024 (the encoder halves it)"))
    n_images: int = arg(10_000, "built-in cartoon faces to train on (seed 0)", AT_LEAST_1)
    ch: int = arg(64, "channels at full resolution (26.3M parameters as given)", AT_LEAST_1)
    z_dim: int = arg(512, "latent dimensions Z", AT_LEAST_1)
    beta: float = arg(1.0, "KL weight (1: ELBO, else beta-VAE)", (lambda v: v >= 0, "0 or more"))
    steps: int = arg(10_000, "optimizer steps (about 5 minutes on one H200)", AT_LEAST_1)
    batch: int = arg(256, "training batch size", AT_LEAST_1)
    lr: float = arg(1e-3, "peak learning rate of AdamW", (lambda v: v > 0, "positive"))
    compile: bool = arg(True, "torch.compile the network (CUDA only)")
    seed: int = arg(0, "random seed of every draw", (lambda v: 0 <= v < 2 ** 31, "below 2^31"))
    n: int = arg(64, "--sample: images; over 64, each is also a PNG (for FID)", AT_LEAST_1)
    out: str = arg("out", "folder for grids and PNGs")

def fail(message):
    raise SystemExit(f"vae.py: {message}")  # one line on stderr: the problem and the fix; exit 1

# --- Data: uint8 [N, H, W, 3] on the device, dequantised to floats in [-1, 1) a batch at a time -
def load_folder(path, size):
    """Images under path as uint8 [N, size, size, 3] (centre squares), and the count unreadable."""
    images, skipped = [], 0
    for name in sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if
                       f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp"))):
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

def load_data(cfg, heldout=0):  # training images, or `heldout` held-out ones (cartoons of seed 1)
    if not cfg.data:
        import cartoons  # only the built-in data needs it
        n, seed = (heldout, 1) if heldout else (cfg.n_images, 0)
        print(f"drawing {n} cartoon faces at {cfg.image_size}x{cfg.image_size} (seed {seed})")
        return cartoons.make(n, cfg.image_size, seed=seed)
    images, skipped = load_folder(cfg.data, cfg.image_size)
    n_out = max(2, math.ceil(HOLDOUT * len(images)))  # 2: --interp pairs them; seed-free split
    images = images[np.random.default_rng(0).permutation(len(images))]
    images = images[:n_out][:heldout] if heldout else images[n_out:]
    which = "held-out" if heldout else "training"
    if len(images) == 0:  # also when there is no such folder
        fail(f"--data {cfg.data}: no {which} images ({skipped} unreadable) -- add png/jpg images")
    print(f"{len(images)} {which} images from {cfg.data} ({skipped} unreadable, skipped)")
    return images

def dequantize(x, generator=None):  # uint8 [B, H, W, 3] -> s = (x + u) / 128 - 1, u ~ U[0, 1)
    u = torch.rand(x.shape, device=x.device, generator=generator)
    return ((x.float() + u) / 128 - 1).permute(0, 3, 1, 2)  # NHWC storage: already channels_last

# --- Model ----------------------------------------------------------------------------------------
conv3 = partial(nn.Conv2d, kernel_size=3, padding=1)  # keeps the side (with stride=2: halves it)

def group_norm(ch):
    return nn.GroupNorm(math.gcd(32, ch), ch)

class ResBlock(nn.Module):  # GroupNorm-SiLU-conv twice, plus a skip (unet.py's block without time)
    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(group_norm(c_in), nn.SiLU(), conv3(c_in, c_out),
                                  group_norm(c_out), nn.SiLU(), conv3(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)

class VAE(nn.Module):  # encoder x [B, 3, S, S] -> (mu, logvar) [B, Z]; decoder z [N, Z] -> mean(z)
    def __init__(self, cfg):
        super().__init__()
        chs, r = [cfg.ch * m for m in CH_MULT], cfg.image_size // SIDE  # r: the side at the bottom
        enc = [conv3(3, chs[0])]
        for c_in, c_out in zip(chs[:1] + chs[:-1], chs):  # each level halves the side
            enc += [ResBlock(c_in, c_out), conv3(c_out, c_out, stride=2)]
        self.encoder = nn.Sequential(*enc, group_norm(chs[-1]), nn.SiLU(), nn.Flatten(),
                                     nn.Linear(chs[-1] * r * r, 2 * cfg.z_dim))
        dec = [nn.Linear(cfg.z_dim, chs[-1] * r * r), nn.Unflatten(1, (chs[-1], r, r))]
        for c_in, c_out in zip(chs[::-1], chs[-2::-1] + chs[:1]):  # each level doubles it
            dec += [nn.Upsample(scale_factor=2), conv3(c_in, c_in), ResBlock(c_in, c_out)]
        self.decoder = nn.Sequential(*dec, group_norm(chs[0]), nn.SiLU(), conv3(chs[0], 3))
        # sigma starts near the error of a blurry reconstruction, as Adam moves it only ~lr a step
        self.log_sigma = nn.Parameter(torch.full((3,), math.log(0.1)))

    def encode(self, x):  # mu, logvar of q(z|x), float32 [B, Z] each
        return self.encoder(x).float().chunk(2, dim=1)

    def decode(self, z):  # mean(z) [N, 3, S, S], float32
        return self.decoder(z).float()

    def forward(self, x):  # (recon, kl) [B] of the ELBO at one z per image: what training uses
        mu, logvar = self.encode(x)
        return elbo(partial(log_px_given_z, self, x), mu, logvar, torch.randn_like(mu))

# --- The math of the VAE: plain functions of tensors, vectors on the last dimension -------------
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

def log_px_given_z(model, x, z):  # log p(s|z) [..., B] of x [B, 3, H, W] for z [..., B, Z]
    mean = model.decode(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
    log_sigma = model.log_sigma.float().repeat_interleave(x[0, 0].numel())  # [D], channel-major
    return log_normal(x.flatten(1), mean, log_sigma)

def bits_per_dim(nats, D):
    """-log p(s) in nats -> bits/dim of y = 128 (s + 1) in [0, 256)^D: adds log 128 per dim."""
    return (nats / D + math.log(128)) / math.log(2)

# --- Training -------------------------------------------------------------------------------------
def learning_rate(cfg, step):  # linear warm-up over WARMUP steps, then a cosine to 0 at --steps
    return cfg.lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))

def train(cfg, device, ckpt_path, stem):  # maximise the ELBO with AdamW (VAE Alg. 1)
    cuda, D = device.type == "cuda", 3 * cfg.image_size ** 2
    torch.manual_seed(cfg.seed)
    data = torch.from_numpy(load_data(cfg)).to(device)  # uint8 [N, H, W, 3] on the device
    model = VAE(cfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=cuda)
    net = torch.compile(model) if cfg.compile and cuda else model  # the plain model is saved
    print(f"training on {device}: {sum(p.numel() for p in model.parameters()):,} parameters")
    stop, stats = [], torch.zeros(3, device=device)  # sums of -ELBO, KL, grad norm since a log
    previous = signal.signal(signal.SIGINT, partial(on_ctrl_c, stop))
    step, step_log, t_log = 0, 0, time.time()
    while step < cfg.steps and not stop:
        opt.param_groups[0]["lr"] = learning_rate(cfg, step)  # the only group
        s = dequantize(data[torch.randint(len(data), (cfg.batch,), device=device)])
        s = torch.where(torch.rand(cfg.batch, 1, 1, 1, device=device) < 0.5 * FLIP, s.flip(3), s)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):  # around the network only
            recon, kl = net(s)
        ((cfg.beta * kl - recon).mean() / D).backward()  # per dimension: one --lr for any size
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats += torch.stack([(kl - recon).mean(), kl.mean(), norm]).detach()
        step += 1
        save = step % CKPT_EVERY == 0 or step == cfg.steps or stop
        if save or step % LOG_EVERY == 0 or step == 1:  # the only host syncs
            neg_elbo, kl_mean, norm = (stats / (step - step_log)).tolist()
            if not math.isfinite(neg_elbo + norm):  # stop before a NaN state can be saved
                fail(f"the loss or its gradient became {neg_elbo + norm} near step {step}; "
                     f"{ckpt_path} keeps the last good state -- lower --lr")
            rate = (step - step_log) * cfg.batch / (time.time() - t_log)  # images/s since the last
            speed = "compiling" if step == 1 and net is not model else (  # no rate from a compile
                f"{rate:,.0f} img/s | ETA {(cfg.steps - step) * cfg.batch / rate / 60:.1f} min")
            print(f"step {step}/{cfg.steps} | -ELBO {bits_per_dim(neg_elbo, D):.4f} bits/dim | KL "
                  f"{kl_mean:.1f} nats | sigma {128 * model.log_sigma.exp().mean():.1f} levels | "
                  f"{speed}", flush=True)
            stats, t_log, step_log = stats.zero_(), time.time(), step
        if save:
            save_checkpoint(ckpt_path, dict(kind="vae", config=asdict(cfg), step=step,
                                            model=model.state_dict()))
            write_grid(pictures("sample", model, replace(cfg, n=64), device)[0],
                       f"{stem}_train_step{step:07d}.png")
    signal.signal(signal.SIGINT, previous)
    print(f"{'interrupted' if stop else 'done'} at step {step}: wrote {ckpt_path}")
    if stop:  # the exit status of a process that Ctrl-C ended
        raise SystemExit(130)

def on_ctrl_c(stop, *_):  # the first Ctrl-C: finish the step, save and stop; a second: stop now
    print("\nfinishing this step, then saving (Ctrl-C again to stop now)", flush=True)
    stop.append(1)
    signal.signal(signal.SIGINT, lambda *_: fail("stopped by a second Ctrl-C"))

def save_checkpoint(path, state):  # atomic: into a temporary file, renamed: a crash keeps the old
    try:
        with open(f"{path}.tmp", "wb") as f:
            torch.save(state, f)  # which flushes f
            os.fsync(f.fileno())
        os.replace(f"{path}.tmp", path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError
        if os.path.exists(f"{path}.tmp"):
            os.remove(f"{path}.tmp")
        fail(f"cannot write {path} ({str(e)[:80]}) -- free some space; the last one is intact")

def load_checkpoint(path, given, device):  # (model, config, step); flags given override config
    try:  # missing, truncated, another script's, a pickle that would run code, or weights that
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # do not fit the flags
        if ckpt["kind"] != "vae":
            raise TypeError(ckpt["kind"])
        known = {f.name for f in fields(Config)}  # a flag since made a constant is ignored
        cfg = replace(Config(**{k: v for k, v in ckpt["config"].items() if k in known}), **given)
        model = VAE(cfg)
        model.load_state_dict(ckpt["model"])
    except Exception as e:
        fail(f"{path} is not a vae.py checkpoint that fits these flags ({type(e).__name__}) -- "
             "train one with `python vae.py --train`, or leave out --ch, --z-dim, --image-size")
    return model.to(device, memory_format=torch.channels_last).eval(), cfg, ckpt["step"]

# --- Pictures and likelihoods, in float32 ---------------------------------------------------------
def to_uint8(s):  # [N, 3, H, W] in the units of s -> uint8 [N, H, W, 3]: the bin of y = 128 (s + 1)
    return (128 * (s.float() + 1)).floor().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()

def write_grid(images, path, cols=8):  # uint8 [N, H, W, 3] -> a PNG, rows of cols, 2 px gaps
    x = np.pad(images, ((0, -len(images) % cols), (2, 0), (2, 0), (0, 0)), constant_values=255)
    n, h, w, _ = x.shape  # blank cells fill the last row; a gap above and left of each
    x = x.reshape(n // cols, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(n // cols * h, -1, 3)
    Image.fromarray(np.pad(x, ((0, 2), (0, 2), (0, 0)), constant_values=255)).save(path)

@torch.no_grad()
def pictures(mode, model, cfg, device):
    """uint8 [N, H, W, 3], grid columns. sample: mean(z), z ~ p(z) = N(0, I); recon: rows of 8
    held-out x above rows of mean(mu(x)); interp: rows of a, mean(z) on mu(a) -> mu(b) (10), b."""
    gen = torch.Generator(device).manual_seed(cfg.seed)
    if mode == "sample":
        z = torch.randn(cfg.n, cfg.z_dim, device=device, generator=gen)
        return np.concatenate([to_uint8(model.decode(b)) for b in z.split(DECODE_BATCH)]), 8
    x = load_data(cfg, heldout=32 if mode == "recon" else 16)
    cols = min(8, len(x)) if mode == "recon" else 2
    x = x[:len(x) // cols * cols]
    mu = model.encode(dequantize(torch.from_numpy(x).to(device), gen))[0]
    if mode == "recon":
        rows = np.stack([x, to_uint8(model.decode(mu))]).reshape(2, -1, cols, *x.shape[1:])
        return rows.swapaxes(0, 1).reshape(-1, *x.shape[1:]), cols
    t = torch.linspace(0, 1, 10, device=device)[None, :, None]
    mid = to_uint8(model.decode(((1 - t) * mu[0::2, None] + t * mu[1::2, None]).flatten(0, 1)))
    strips = [x[0::2, None], mid.reshape(-1, 10, *x.shape[1:]), x[1::2, None]]
    return np.concatenate(strips, axis=1).reshape(-1, *x.shape[1:]), 12

@torch.no_grad()
def evaluate(model, images, cfg, device, name):
    """-ELBO, recon, KL and -IWAE_K per image, in nats of y; prints their bits/dim, mean ± s.e."""
    gen, D, rows = torch.Generator(device).manual_seed(cfg.seed), 3 * cfg.image_size ** 2, []
    t_print = time.time()
    for batch in torch.from_numpy(images).split(max(1, DECODE_BATCH // IWAE_K)):  # K decodes each
        if time.time() - t_print > 5:  # slow devices: a line every 5 s, never silent for long
            print(f"  evaluated {sum(len(r) for r in rows)}/{len(images)}", flush=True)
            t_print = time.time()
        x = dequantize(batch.to(device), gen)
        mu, logvar = model.encode(x)
        log_px = partial(log_px_given_z, model, x)
        recon, kl = elbo(log_px, mu, logvar, torch.randn(mu.shape, device=device, generator=gen))
        eps = torch.randn((IWAE_K, *mu.shape), device=device, generator=gen)
        rows.append(torch.stack([recon, kl, iwae_bound(log_px, mu, logvar, eps)], 1).double().cpu())
    recon, kl, iwae = torch.cat(rows).T - D * math.log(128) * torch.tensor([[1], [0], [1]])  # of y
    table = {"-ELBO = recon + KL": kl - recon, "  recon: -log p(x|z)": -recon,
             "  KL(q(z|x) || p(z))": kl, f"-IWAE (K={IWAE_K})": -iwae}
    print(f"{name}: {len(kl)} held-out images; bits/dim of y, mean ± standard error over images")
    for label, v in table.items():
        m, se = v.mean().item(), v.std().item() / math.sqrt(len(v))
        print(f"  {label:<22} {m / D / math.log(2):.4f} ± {se / D / math.log(2):.4f}")
    return table

# --- Command line: --train | --sample | --recon | --interp | --eval, and every Config field ------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: fail(f"{message} -- see python vae.py --help")
    modes = p.add_mutually_exclusive_group(required=True)
    for mode, says in dict(train="train on the ELBO (writes --ckpt)", sample="decode prior draws",
                           recon="held-out faces above their reconstructions", interp="latent "
                           "strips", eval="held-out -ELBO and IWAE in bits/dim").items():
        modes.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode, help=says)
    p.add_argument("--ckpt", default="vae.pt", help="checkpoint path (default: vae.pt)")
    for f in fields(Config):
        kind = dict(action=argparse.BooleanOptionalAction) if f.type is bool else dict(type=f.type)
        p.add_argument(f"--{f.name.replace('_', '-')}", default=argparse.SUPPRESS,
                       help=f"{f.metadata['help']} (default: {f.default})", **kind)
    given = vars(p.parse_args(argv))  # the flags given: the others' default is SUPPRESS
    mode, ckpt_path, cfg = given.pop("mode"), given.pop("ckpt"), Config(**given)
    if mode == "train" and not torch.cuda.is_available():  # a laptop: faces in minutes
        small = {k: v for k, v in CPU_RECIPE.items() if k not in given}
        cfg = replace(cfg, **small)
        print(f"no CUDA GPU, so a small recipe: {small} -- flags you give override it")
    for f in fields(cfg):  # one clear line for the first impossible value, before any work
        v, ok = getattr(cfg, f.name), f.metadata["ok"]
        if ok and not (ok[0](v) and math.isfinite(v)):  # NaN and inf pass no range
            fail(f"--{f.name.replace('_', '-')} {v}: must be a finite number, {ok[1]}")
    if mode == "train" and os.path.exists(ckpt_path):
        fail(f"{ckpt_path} exists -- pass --ckpt NEW.pt, or move it away to train again")
    device = torch.device("cuda" if torch.cuda.is_available() else
                          "mps" if torch.backends.mps.is_available() else "cpu")
    if mode != "train":
        model, cfg, step = load_checkpoint(ckpt_path, given, device)
    try:  # a folder that cannot be written stops the run now, not after the work (as ddpm.py)
        for folder in [cfg.out] + [os.path.dirname(ckpt_path) or "."] * (mode == "train"):
            os.makedirs(folder, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        fail(f"cannot write {e.filename} ({e.strerror}) -- pass a writable --out or --ckpt")
    stem = os.path.join(cfg.out, os.path.basename(ckpt_path).rsplit(".", 1)[0])
    if mode == "train":
        return train(cfg, device, ckpt_path, stem)
    name = f"{stem}_step{step}_{mode}_seed{cfg.seed}"  # named after what made it
    if mode == "eval":
        return evaluate(model, load_data(cfg, heldout=N_EVAL), cfg, device, os.path.basename(name))
    images, cols = pictures(mode, model, cfg, device)
    write_grid(images[:64] if mode == "sample" else images, f"{name}.png", cols)
    pngs = cfg.n if mode == "sample" and cfg.n > 64 else 0  # one PNG a sample, for FID
    for k, im in enumerate(images[:pngs]):
        os.makedirs(f"{name}_n{pngs}", exist_ok=True)
        Image.fromarray(im).save(f"{name}_n{pngs}/{k:06d}.png")
    print(f"wrote {name}.png" + f" and {pngs} PNGs in {name}_n{pngs}" * bool(pngs))

if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda *_: fail("stopped by Ctrl-C"))  # outside training: 1 line
    main()
