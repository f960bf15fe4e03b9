"""Lets the tests import the top-level scripts (ddpm.py, unet.py, ...) as modules; a step clock."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
