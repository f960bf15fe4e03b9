"""Lets the tests import the top-level scripts (ddpm.py, unet.py, ...) as modules; a step clock."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def step_clock(monkeypatch):
    """on(module, first, rest) makes the script's wall clock move only when a training step runs:
    `first` seconds for the first step (the compile, on a GPU), `rest` for each one after it.
    Tests of --minutes then see the same steps on any machine, however slow (a real clock made
    them flaky on a 2-core CI). The script's make_trainer returns its step function last."""
    def on(module, first, rest):
        clock, make = {"now": 1000.0, "steps": 0}, module.make_trainer
        monkeypatch.setattr(module, "time",
                            type("Clock", (), {"time": staticmethod(lambda: clock["now"])}))

        def stepping(*args):
            *parts, step = make(*args)

            def timed(*args):
                clock["now"] += first if clock["steps"] == 0 else rest
                clock["steps"] += 1
                return step(*args)
            return (*parts, timed)
        monkeypatch.setattr(module, "make_trainer", stepping)
    return on
