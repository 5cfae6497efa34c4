"""The sampler: a separate process that polls every sensor at a fixed interval and appends CSV rows.

Run as ``python -m distill_kit.energy.sampler --out FILE --interval-ms 100 --attempt N --parent-pid PID``.
It is a process, not a thread of the training process, because one NVML call costs about 2 ms of Python and
the GIL would steal that from training. It prints ``ready`` once its first row is on disk, flushes every row
(so a killed run keeps its samples), stops on SIGTERM after a last row, and exits by itself when its parent dies.
A sensor that errors mid-stage leaves empty cells and an ``error`` note; sampling goes on.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import time
from pathlib import Path

from distill_kit.energy.cpumodel import tree_cpu_s, tree_rss_mib
from distill_kit.energy.sensors import NvmlGpus, SensorUnavailable, rapl_zones

GPU_FIELDS = ("power_w", "energy_mj", "util_pct", "mem_mib", "sm_mhz", "temp_c")


class _CpuUtil:
    """Whole-machine CPU utilisation from /proc/stat between two reads (None where /proc is absent)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def percent(self) -> float | None:
        now = self._read()
        if now is None or self._last is None:
            return None
        total, idle = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        return 100.0 * (1 - idle / total) if total > 0 else None


class _ForeignCpu:
    """CPU use of every process outside the kit's own tree, as a share of the whole machine, between two reads.

    The machine's busy CPU time (``psutil.cpu_times``) minus the CPU time of the kit's process tree (the runner
    given by ``--parent-pid``, its reaped children, and every live descendant, this sampler included). None where
    psutil cannot read it (no /proc, the parent gone).
    """

    def __init__(self, parent_pid: int | None) -> None:
        import psutil

        self._psutil = psutil
        self._parent = psutil.Process(parent_pid) if parent_pid else psutil.Process().parent()
        self._cpus = psutil.cpu_count() or 1
        self._tree_cpu_s()  # fails here, not at every row, when the parent cannot be read
        self._last: tuple[float, float, float] | None = None  # the first row has no interval to measure over

    def _tree_cpu_s(self) -> float:
        return tree_cpu_s(self._parent)

    def tree_rss_mib(self) -> float | None:
        """Resident memory of the kit's process tree (the RAM model's process attribution)."""
        try:
            return tree_rss_mib(self._parent)
        except (self._psutil.Error, OSError):
            return None

    def _read(self) -> tuple[float, float, float] | None:
        try:
            machine = self._psutil.cpu_times()
            busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
            return time.monotonic(), busy, self._tree_cpu_s()
        except (self._psutil.Error, OSError):
            return None

    def sample(self) -> tuple[float | None, float | None]:
        """Other processes' share of the machine since the last call, and the tree's CPU seconds now."""
        now = self._read()
        last, self._last = self._last, now
        tree_s = now[2] if now else None
        if now is None or last is None or now[0] <= last[0]:
            return None, tree_s
        # The tree's reading falls only when an orphaned descendant leaves it (cpumodel.window_cpu_s): that is
        # no one else's work, so the tree's share of the interval is its rise, never a negative one.
        foreign_s = (now[1] - last[1]) - max(0.0, now[2] - last[2])
        return max(0.0, min(100.0, 100.0 * foreign_s / ((now[0] - last[0]) * self._cpus))), tree_s


def _foreign_cpu(parent_pid: int | None) -> _ForeignCpu | None:
    try:
        return _ForeignCpu(parent_pid)
    except Exception:  # noqa: BLE001 - no psutil or no parent: the column stays empty, sampling goes on
        return None


def _ram_used_mib() -> float | None:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0])
        available = int(info["MemAvailable"].split()[0])
        return (total - available) / 1024.0
    except (OSError, KeyError, ValueError):
        return None


def _open_sensors() -> tuple[NvmlGpus | None, list]:
    """Every sensor this machine has; one that cannot be opened is simply absent from the trace."""
    try:
        opened = NvmlGpus.open()
        gpus: NvmlGpus | None = opened if opened.gpus else None
    except SensorUnavailable:
        gpus = None
    try:
        zones = rapl_zones()
    except SensorUnavailable:
        zones = []
    return gpus, zones


def _read_row(attempt: int, gpus: NvmlGpus | None, zones: list, cpu: _CpuUtil,
              foreign: _ForeignCpu | None) -> dict[str, object]:
    foreign_pct, tree_s = foreign.sample() if foreign else (None, None)
    row: dict[str, object] = {"t": repr(time.time()), "attempt": attempt, "cpu_util_pct": cpu.percent(),
                              "cpu_foreign_pct": foreign_pct, "cpu_tree_s": tree_s,
                              "ram_used_mib": _ram_used_mib(),
                              "ram_tree_mib": foreign.tree_rss_mib() if foreign else None}
    errors = []
    if gpus:
        try:
            for i, reading in enumerate(gpus.sample()):
                row.update({f"gpu{i}_{k}": v for k, v in reading.items()})
        except Exception as err:  # noqa: BLE001 - a GPU that disappears must not stop the run
            errors.append(f"gpu: {err}")
    for zone in zones:
        try:
            row[f"rapl_{zone.name}_uj"] = zone.read_uj()
        except OSError as err:
            errors.append(f"rapl {zone.name}: {err}")
    row["error"] = "; ".join(errors)
    return row


def run(out: Path, interval_ms: int, attempt: int, parent_pid: int | None) -> int:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the runner, which stops us in order
    gpus, zones = _open_sensors()
    cpu = _CpuUtil()
    foreign = _foreign_cpu(parent_pid)
    columns = ["t", "attempt", "cpu_util_pct", "cpu_foreign_pct", "cpu_tree_s", "ram_used_mib", "ram_tree_mib"]
    if gpus:
        columns += [f"gpu{i}_{f}" for i in range(len(gpus.gpus)) for f in GPU_FIELDS]
    columns += [f"rapl_{z.name}_uj" for z in zones]
    columns.append("error")

    interval = interval_ms / 1000.0
    with open(out, "a", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        if handle.tell() == 0:
            writer.writeheader()
        next_tick = time.monotonic()
        first = True
        while True:
            row = _read_row(attempt, gpus, zones, cpu, foreign)
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
            handle.flush()
            if first:
                print("ready", flush=True)
                first = False
            if stop or (parent_pid and not _alive(parent_pid)):
                return 0
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay < 0:  # fell behind (slow sensor): skip ticks rather than bursting
                next_tick = time.monotonic()
                delay = 0
            time.sleep(delay)


def _alive(pid: int) -> bool:
    if os.getppid() != pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill_kit.energy.sampler")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    return run(args.out, args.interval_ms, args.attempt, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
