"""A stage's start is journaled together with its measurement window: Ctrl-C between the two waits for both."""

from __future__ import annotations

import os
import signal
import time

import pytest

from distill_kit.runner.execute import _interrupts_deferred


def test_ctrl_c_inside_the_block_is_raised_when_it_ends() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now: with the default handler this line would not finish
            steps.append("journaled")
            steps.append("window opened")
    assert steps == ["journaled", "window opened"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_interrupt_no_change() -> None:
    with _interrupts_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
