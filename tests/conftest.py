"""Lets the tests import the top-level scripts (ddpm.py, unet.py, ...) as modules; a step clock;
the scripts' command lines run in this process."""
import os
import runpy
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture
def step_clock(monkeypatch):
    """on(module, first, rest) makes ddpm.py's wall clock move only when a training step runs:
    `first` seconds for the first step of a run (the compile, on a GPU), `rest` for each one after.
    Tests of --minutes then see the same steps on any machine, however slow."""
    def on(module, first, rest):
        clock, loss = {"now": 1000.0, "steps": 0}, module.diffusion_loss
        monkeypatch.setattr(module, "time",
                            type("Clock", (), {"time": staticmethod(lambda: clock["now"])}))

        def timed(*args):
            clock["now"] += first if clock["steps"] == 0 else rest
            clock["steps"] += 1
            return loss(*args)
        monkeypatch.setattr(module, "diffusion_loss", timed)
        return clock
    return on


@pytest.fixture
def as_command(monkeypatch, capsys):
    """as_command(script, *args) runs `python script args` in this process (its __main__ block,
    without a second import of torch): (exit status, stdout, stderr), as the shell would see them.
    For runs that stop before any work: a process pool's children could not import this main."""
    def run(script, *args):
        monkeypatch.setattr(sys, "argv", [script, *args])
        code = 0
        try:
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        except SystemExit as e:  # as Python ends: a string goes to stderr, with status 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 1 if isinstance(e.code, str) else e.code or 0
        out = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run
