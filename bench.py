"""Benchmarks of the default model on this machine: training and sampling speed, MFU, memory.

The one file that imports the scripts (as nanoGPT keeps its bench.py apart from train.py):

    python bench.py              # ddpm.py's training step (eager, compiled) and sampling rate
    python bench.py --ab         # unet.py's speed-ups against the plain layers; CUDA graphs on/off
    python bench.py --ddim       # DDIM-50 images/s: eager fp32 (TF32) against compiled bf16

MFU = the FLOPs of a training step (torch.utils.flop_counter: matmuls, convolutions, attention) /
its time / the dense bf16 matmul rate measured here (8192^3; fp32 off CUDA).
"""
import argparse
import time
from dataclasses import replace

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import ddpm
import unet

def seconds_per_call(fn, reps, warmup=3):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for i in range(warmup + reps):
        if i == warmup:  # the clock starts once the warm-up calls have run on the GPU
            sync()
            t0 = time.perf_counter()
        fn()
    sync()
    return (time.perf_counter() - t0) / reps

def matmul_peak(device):
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / seconds_per_call(lambda: a @ b, reps=20)

def training_step(cfg, device, compiled):
    """ddpm.train's step (AdamW, clipping, EMA) as a function, on random images."""
    model = ddpm.build_model(cfg).to(device, memory_format=torch.channels_last)
    ema = ddpm.copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    net = ddpm.compile_for_training(model, device.type == "cuda") if compiled else model
    sched = ddpm.make_schedule(cfg.schedule, cfg.T, device)
    data = torch.randint(0, 256, (4096, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                         device=device)
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def step():
        if compiled and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        loss = ddpm.diffusion_loss(net, sched, ddpm.get_batch(data, cfg.batch, cfg.flip)[0], cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema_params, params, 0.001)
    return model, step

def bench_training(cfg, device, label="", eager=True):
    """Training images/s and MFU, eager then compiled (on CUDA); with eager, sampling evals/s."""
    cuda, peak = device.type == "cuda", matmul_peak(device)
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, batch "
          f"{cfg.batch}, {cfg.image_size}px; matmul peak {peak / 1e12:.0f} TFLOP/s measured")
    model, step = training_step(cfg, device, compiled=False)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    print(f"model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{flops / cfg.batch / 3e9:.1f} GFLOP per image forward (a training step: 3x)")
    for compiled in [False] * (eager or not cuda) + [True] * (cfg.compile and cuda):
        model, step = training_step(cfg, device, compiled)
        first = seconds_per_call(step, reps=1, warmup=0)  # compilation, cuDNN autotuning
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        dt = seconds_per_call(step, reps=50 if cuda else 2, warmup=5 if cuda else 1)
        mem = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if cuda else "n/a"
        kind = "compiled" if compiled else "eager"
        print(f"training {label}{kind}: {cfg.batch / dt:,.0f} img/s, {dt * 1e3:.1f} ms/step, "
              f"MFU {flops / dt / peak:.1%}, peak memory {mem}, first step {first:.0f} s",
              flush=True)
    return bench_sampling(cfg, model, device, label) if eager else None  # --ab: not again

def bench_sampling(cfg, model, device, label=""):
    """Network evaluations/s at the sampling batch, compiled on CUDA: 150 calls, as many as DDIM-50
    makes for three batches, so the figure is the rate a sampling run sustains, not a burst's."""
    cuda = device.type == "cuda"
    net = torch.compile(model.eval()) if cfg.compile and cuda else model.eval()
    x = torch.randn(cfg.sample_batch, 3, cfg.image_size, cfg.image_size, device=device)
    x, t = x.contiguous(memory_format=torch.channels_last), torch.full((len(x),), cfg.T // 2,
                                                                       device=device)

    def evaluate():
        with torch.no_grad(), ddpm.autocast(device):
            net(x, t)
    rate = cfg.sample_batch / seconds_per_call(evaluate, reps=150 if cuda else 1)
    print(f"sampling {label}{rate:,.0f} network evals/s at batch {cfg.sample_batch}", flush=True)
    return rate

Identity = type("Identity", (), dict(apply=staticmethod(lambda x: x)))  # DenseGrad, not dense

def bench_ab(cfg, device):
    """Each speed-up against the plain layer, in one process: the default first; GroupNorm plain,
    sampling only (its gain is there); Upsample, DenseGrad plain (they pay together); no graphs."""
    plain = dict(GroupNorm=nn.GroupNorm, Upsample=lambda: nn.Upsample(scale_factor=2),
                 DenseGrad=Identity)
    ours, compile_ddpm = {k: getattr(unet, k) for k in plain}, ddpm.compile_for_training
    for name, swap in (("all speed-ups", ()), ("plain GroupNorm", ("GroupNorm",)),
                       ("plain Upsample, DenseGrad", ("Upsample", "DenseGrad")),
                       ("no CUDA graphs", ("graphs",))):
        vars(unet).update({k: plain[k] if k in swap else ours[k] for k in ours})
        ddpm.compile_for_training = lambda net, graphs: compile_ddpm(net, "graphs" not in swap)
        torch._dynamo.reset()
        if "GroupNorm" in swap:
            bench_sampling(cfg, ddpm.build_model(cfg).to(device, memory_format=torch.channels_last),
                           device, label=f"[{name}] ")
        else:
            bench_training(cfg, device, label=f"[{name}] ", eager=not swap)
    vars(unet).update(ours)
    ddpm.compile_for_training = compile_ddpm

def bench_ddim(cfg, device, steps=50):
    """DDIM-50 images/s at --sample-batch through ddim.ddim_sample: eager fp32 (TF32 off, then on)
    against compiled bf16 with CUDA's defaults (TF32 on)."""
    import ddim
    cuda = device.type == "cuda"
    model = ddpm.build_model(cfg).to(device, memory_format=torch.channels_last).eval()
    abar = ddpm.make_schedule(cfg.schedule, cfg.T)["alphas_cumprod"].to(device)
    pairs = ddim.timestep_pairs(cfg.T, steps, "uniform")
    x = torch.randn(cfg.sample_batch, 3, cfg.image_size, cfg.image_size, device=device)
    x, rates = x.contiguous(memory_format=torch.channels_last), {}
    compiled = torch.compile(model) if cuda else model
    for name, net, bf16, tf32 in (("eager fp32", model, False, False), ("eager TF32", model,
                                  False, True), ("compiled bf16", compiled, True, True)):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        run = lambda: ddim.ddim_sample(net, abar, x, pairs, cfg.prediction, bf16=bf16)  # noqa
        rates[name] = len(x) / seconds_per_call(run, reps=1, warmup=1)
        print(f"DDIM-{steps} {name}: {rates[name]:,.1f} img/s at batch {len(x)}", flush=True)
    print(f"compiled bf16 / eager fp32: {rates['compiled bf16'] / rates['eager fp32']:.2f}x, "
          f"/ eager TF32: {rates['compiled bf16'] / rates['eager TF32']:.2f}x")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ab", action="store_true", help="A/B of unet.py's speed-ups")
    p.add_argument("--ddim", action="store_true", help="DDIM-50 sampling: eager against compiled")
    p.add_argument("--tiny", action="store_true", help="a small network (a check on the CPU)")
    args = p.parse_args(argv)
    cfg = ddpm.Config()
    if args.tiny:
        cfg = replace(cfg, ch=16, ch_mult=(1, 2), attn_levels=(1,), batch=4, image_size=16,
                      sample_batch=4)
    device = ddpm.pick_device()
    if args.ab:
        return bench_ab(cfg, device)
    if args.ddim:
        return bench_ddim(cfg, device)
    bench_training(cfg, device)

if __name__ == "__main__":
    main()
