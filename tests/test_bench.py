"""bench.py on a tiny network on the CPU: it still runs against the scripts' functions."""
from dataclasses import replace

import torch

import bench
import ddpm

TINY = replace(ddpm.Config(), ch=16, ch_mult=(1, 2), attn_levels=(1,), batch=4, image_size=16,
               sample_batch=4)


def test_bench_runs_against_ddpm_and_ddim():
    torch.manual_seed(0)
    device = torch.device("cpu")
    assert bench.bench_training(TINY, device) > 0  # network evaluations per second
    bench.bench_ddim(TINY, device, steps=2)  # ddim.timestep_pairs and ddim_sample as bench uses
