"""Without CUDA, ddpm.py and vae.py train a recipe a laptop can run (issue: a CPU recipe)."""
import os
import subprocess
import sys

import torch

import ddpm
import vae


def test_without_cuda_the_cpu_recipes_run_given_flags_win_and_memory_stays_small(tmp_path):
    """CUDA hidden: --train takes each script's CPU_RECIPE for every flag not given, the given ones
    win, and two steps of ddpm.py's recipe then two of vae.py's peak under the 4 GB a laptop can
    spare (ru_maxrss of the child, KiB on Linux; 64 images keep the data small, the networks and
    batches are the recipes'). One child for both: importing torch is most of its time."""
    code = ("import resource, sys, ddpm, vae; "
            "argv = ['--train', '--steps', '2', '--n-images', '64']; "
            "ddpm.main(argv + ['--sample-steps', '2']); vae.main(argv); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.path.dirname(ddpm.__file__))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # the full sizes: hours
    assert done.returncode == 0, done.stderr
    for name, module in (("ddpm.pt", ddpm), ("vae.pt", vae)):
        config = torch.load(tmp_path / name, weights_only=True)["config"]
        assert config["steps"] == 2 and config["n_images"] == 64
        assert all(config[k] == v for k, v in module.CPU_RECIPE.items()
                   if k not in ("steps", "n_images"))
    assert int(done.stdout.split()[-1]) < 4 * 2 ** 20
