"""ddpm.py under DDP on the CPU (gloo, 2 processes): gradients are averaged, rank 0 alone writes."""
import copy
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import ddpm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--ch", "16", "--ch-mult", "1,2", "--attn-levels", "1", "--n-images", "32",
        "--image-size", "16", "--T", "50", "--sample-every", "0", "--sample-steps", "4",
        "--log-every", "2", "--ckpt-every", "4", "--batch", "8"]


def one_step(rank, port, results):
    """One AdamW step of the training loop's pieces (ddpm.diffusion_loss through DDP, as ddpm.train
    runs it) on rank-own data; returns each parameter's update and the local and process-averaged
    gradients of the step's loss, recomputed from the same random draws."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    cfg = ddpm.Config(ch=16, ch_mult=(1, 2), attn_levels=(1,), batch=8, image_size=8, T=50,
                      flip=False)
    sched = ddpm.make_schedule("linear", 50)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = ddpm.build_model(cfg)
    net = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (16, 8, 8, 3), generator=torch.Generator().manual_seed(rank),
                         dtype=torch.uint8)  # each rank its own images
    replica = copy.deepcopy(model)
    torch.manual_seed(100 + rank)
    ddpm.diffusion_loss(replica, sched, ddpm.get_batch(data, 4, False)[0], cfg).backward()
    local = torch.cat([p.grad.flatten() for p in replica.parameters()])
    mean = local.clone()
    dist.all_reduce(mean)
    mean /= 2
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.manual_seed(100 + rank)  # the same draws inside the step
    ddpm.diffusion_loss(net, sched, ddpm.get_batch(data, 4, False)[0], cfg).backward()
    opt.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    results[rank] = (after - before, local, mean, before)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradients_are_averaged_over_processes():
    """Adam's first update is -lr m/(sqrt(v) + eps) = -lr sign(g) (bias-corrected, |g| >> eps), so
    the sign of each update shows which gradient the optimizer saw: it must be the mean of the two
    processes' gradients (where that is clearly non-zero), not each process's own, and both
    processes must end with the same weights."""
    results = mp.Manager().dict()
    # fork on Linux without a GPU (fast: no new interpreters); else spawn: once a test has run
    # autograd on a GPU, a forked child cannot run backward ("Unable to handle autograd's
    # threading in combination with fork-based multiprocessing"), and macOS forks badly
    method = "fork" if sys.platform == "linux" and not torch.cuda.is_available() else "spawn"
    mp.start_processes(one_step, args=(free_port(), results), nprocs=2, start_method=method)
    (update0, local0, mean0, start0), (update1, _, mean1, start1) = results[0], results[1]
    torch.testing.assert_close(start0, start1, rtol=0, atol=0)  # rank 0's weights, broadcast
    torch.testing.assert_close(update0, update1, rtol=0, atol=0)
    torch.testing.assert_close(mean0, mean1)
    clear = mean0.abs() > 1e-4
    assert (torch.sign(update0[clear]) == -torch.sign(mean0[clear])).float().mean() > 0.999
    # where a process's own gradient points the other way, so that the test can tell it from the
    # mean (few at the first step: the zero-initialised output layer blocks most gradients)
    disagree = clear & (torch.sign(local0) != torch.sign(mean0))
    assert disagree.sum() >= 20


def torchrun(args, folder, nproc=2, env=None):
    """ddpm.py under torchrun on the CPU (CUDA hidden: on a 1-GPU machine two processes could not
    each have a GPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": "",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", os.path.join(ROOT, "ddpm.py"), *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_writes_once_and_resumes_on_one_process(tmp_path):
    """torchrun with 2 processes: one checkpoint, one grid, one progress stream; ddim.py samples
    from it; then --resume in a single process continues from the saved step."""
    run = torchrun(["--train", "--steps", "4", *TINY], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("done: 4 steps") == 1 and run.stdout.count("step 2/4") == 1
    assert sorted(os.listdir(tmp_path)) == ["ddpm.pt", "out"]
    grid = "ddpm_train_step0000004"
    assert sorted(os.listdir(tmp_path / "out")) == [f"{grid}.gif", f"{grid}.png"]
    assert torch.load(tmp_path / "ddpm.pt", weights_only=True)["step"] == 4
    os.chdir(tmp_path)
    import ddim  # the 2-process checkpoint samples in one CPU process
    ddim.main(["--ckpt", "ddpm.pt", "--steps", "2", "--n", "2", "--out", "ddim_out"])
    assert len(os.listdir("ddim_out")) >= 1
    ddpm.main(["--train", "--resume", "--steps", "6", *TINY])
    assert torch.load(tmp_path / "ddpm.pt", weights_only=True)["step"] == 6


def test_more_processes_than_gpus_stop_with_one_line(tmp_path, monkeypatch, capsys):
    """torchrun --nproc_per_node=2 on a machine with one GPU: rank 0 says so in one line, rank 1
    leaves quietly, and neither starts a process group (faked here: one GPU, two processes)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined"))
    for rank, says in ((0, "ddpm.py: torchrun started more processes than the 1 GPU(s) here -- "
                           "pass --nproc_per_node=1"), (1, 1)):
        monkeypatch.setattr(os, "environ", {**os.environ, "RANK": str(rank), "LOCAL_RANK":
                                            str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
        with pytest.raises(SystemExit) as stop:
            ddpm.train(ddpm.Config(), str(tmp_path / "x.pt"))
        assert stop.value.code == says
