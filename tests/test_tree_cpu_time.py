"""The process tree's CPU seconds over a window when descendants end inside it (energy/cpumodel.py): a grandchild
reaped by a child, and an orphaned grandchild (its parent gone first, so init reaps it and its time leaves the
tree). Real processes: on the H200 a rehearsal's eval window recorded -8.9 s for 1.8 s when descendants holding
7 GB of memory left the tree (most likely torch's compile workers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

from distill_kit.energy.cpumodel import read_usage, window_cpu_s  # noqa: E402

# A grandchild that burns `first` CPU-seconds, says so, waits for the go file, burns `second` more and ends.
GRANDCHILD = """
import sys, time
from pathlib import Path
def burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
burn(float(sys.argv[1]))
Path(sys.argv[3]).write_text("burnt")
while not Path(sys.argv[4]).exists():
    time.sleep(0.01)
burn(float(sys.argv[2]))
"""

# The child: starts the grandchild, waits for the go file, then either reaps it (stays alive afterwards) or ends
# at once without waiting (the grandchild is orphaned while it still has work to do).
CHILD = """
import os, subprocess, sys, time
from pathlib import Path
grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[2], *sys.argv[3:]])
go = Path(sys.argv[6])
while not go.exists():
    time.sleep(0.01)
if sys.argv[1] == "reap":
    grandchild.wait()
    Path(sys.argv[6] + ".reaped").write_text("1")
    time.sleep(60)
else:
    os._exit(0)
"""


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["reap", "orphan"])
def test_a_descendant_ending_inside_a_window_never_takes_its_earlier_time_out_of_it(tmp_path: Path,
                                                                                   mode: str) -> None:
    burnt, go = tmp_path / "burnt", tmp_path / "go"
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, GRANDCHILD, "1.0", "0.3", str(burnt), str(go)])
    try:
        _wait_for(burnt)  # the grandchild has 1.0 CPU-seconds behind it, inside the tree
        start = read_usage()
        go.write_text("go")
        if mode == "reap":
            _wait_for(Path(f"{go}.reaped"))
        else:
            child.wait(timeout=60)  # the child is gone; the orphaned grandchild burns on outside the tree
            time.sleep(0.6)
        end = read_usage()
        cpu_s = window_cpu_s([start["cpu_tree_s"], end["cpu_tree_s"]])
        if mode == "reap":
            # The grandchild's last 0.3 s is the window's work (a little more: the interpreters' own ticks).
            assert 0.25 <= cpu_s <= 1.0, cpu_s
        else:
            # Its last 0.3 s is lost with it (init reaped it); the window must not lose its earlier second too.
            assert 0.0 <= cpu_s <= 1.0, cpu_s
            assert end["cpu_tree_s"] - start["cpu_tree_s"] < -0.5  # what the plain difference would record
    finally:
        child.kill()
        child.wait()


def test_the_window_figure_sums_the_rises_of_the_edges_and_the_sampler_rows_between_them() -> None:
    from distill_kit.energy.accounting import window_figures
    from distill_kit.energy.cpumodel import CpuIdentity, power_model
    from distill_kit.energy.trace import Trace

    model = power_model({}, CpuIdentity("AMD EPYC", "AuthenticAMD", 25, 1, 2), 16.0).to_dict()
    start = {"t": 100.0, "cpu_tree_s": 50.0, "cpu_busy_s": 500.0, "ram_tree_mib": 1024.0, "ram_used_mib": 4096.0}
    end = {"t": 104.0, "cpu_tree_s": 45.0, "cpu_busy_s": 508.0, "ram_tree_mib": 1024.0, "ram_used_mib": 4096.0}
    # 1 s of work, an orphan leaves with 9 s of earlier time, 2 s + 1 s of work
    rows = [{"t": 101.0, "cpu_tree_s": 51.0}, {"t": 102.0, "cpu_tree_s": 42.0}, {"t": 103.0, "cpu_tree_s": 44.0}]
    edges = {"start": start, "end": end, "rapl_max_uj": {}, "rapl_domain": {}, "power_model": model}
    sampled = window_figures(Trace(["t", "cpu_tree_s"], rows), 100.0, 104.0, edges, None, 1.0, {})["cpu"]
    assert sampled.attribution["process"]["cpu_s"] == pytest.approx(1.0 + 2.0 + 1.0)
    assert sampled.attribution["machine"]["cpu_s"] == pytest.approx(8.0)
    # A trace without the column (older kits): the edges alone, a fall counted as no work rather than negative work
    edges_only = window_figures(Trace(["t"], []), 100.0, 104.0, edges, None, 1.0, {})["cpu"]
    assert edges_only.attribution["process"]["cpu_s"] == 0.0
