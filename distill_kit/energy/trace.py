"""Sensor traces: the raw samples behind every measured figure, and the arithmetic done on them.

A trace is CSV (gzip on disk once a stage ends): a header, then one row per sample. Column ``t`` is the Unix time
in seconds, ``attempt`` the stage attempt, the rest are sensor readings named with their unit
(``gpu0_power_w``, ``gpu0_energy_mj``, ``rapl_package-0_uj``...); an empty cell is a reading that failed, and the
``error`` column says why. The same functions serve the meter and ``verify``, so both compute alike.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_GAP_FACTOR = 2.5  # a gap longer than this many sampling intervals is not covered


@dataclass
class Trace:
    columns: list[str]
    rows: list[dict[str, float | str | None]]

    def times(self) -> list[float]:
        return [float(r["t"]) for r in self.rows]  # type: ignore[arg-type]

    def window(self, t_start: float, t_end: float, attempt: int | None = None) -> Trace:
        rows = [r for r in self.rows
                if t_start <= float(r["t"]) <= t_end  # type: ignore[arg-type]
                and (attempt is None or r.get("attempt") == attempt)]
        return Trace(self.columns, rows)

    def values(self, column: str) -> list[tuple[float, float]]:
        """(t, value) pairs of a numeric column, skipping failed readings."""
        return [(float(r["t"]), float(r[column])) for r in self.rows  # type: ignore[arg-type]
                if isinstance(r.get(column), float)]

    def gpu_indices(self) -> list[int]:
        return sorted({int(c[3:].split("_", 1)[0]) for c in self.columns if c.startswith("gpu") and
                       c.endswith("_power_w")})


def _cell(value: str) -> float | str | None:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def parse_trace(text: str) -> Trace:
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    rows: list[dict[str, float | str | None]] = []
    for raw in reader:
        if raw.get("t") in (None, ""):
            continue  # a torn last line of a killed writer
        row = {k: _cell(v or "") for k, v in raw.items() if k is not None}
        if not isinstance(row.get("t"), float):
            continue
        row["attempt"] = int(row["attempt"]) if isinstance(row.get("attempt"), float) else None  # type: ignore
        rows.append(row)
    return Trace(columns, rows)


def parse_trace_bytes(data: bytes, gzipped: bool = True, max_bytes: int = 1 << 30) -> Trace:
    """A trace from its (gzip) bytes, bounded; a truncated gzip stream yields the rows before the break."""
    if not gzipped:
        return parse_trace(data[:max_bytes].decode("utf-8", errors="replace"))
    chunks, total = [], 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
        try:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise ValueError(f"trace larger than {max_bytes} bytes uncompressed")
                chunks.append(chunk)
        except EOFError:
            pass
    return parse_trace(b"".join(chunks).decode("utf-8", errors="replace"))


def read_trace(path: Path, max_bytes: int = 1 << 30) -> Trace:
    """Read a trace file (.csv or .csv.gz)."""
    return parse_trace_bytes(path.read_bytes(), gzipped=path.suffix == ".gz", max_bytes=max_bytes)


def render_trace(columns: list[str], rows: Iterable[dict[str, float | str | None]]) -> bytes:
    """Deterministic gzip of a trace (mtime 0, fixed column order)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in row.items()})
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(text.getvalue().encode("utf-8"))
    return buffer.getvalue()


def integrate_power_j(samples: list[tuple[float, float]], t_start: float, t_end: float) -> float | None:
    """Trapezoidal integral of power (W) over [t_start, t_end]; the ends are held at the nearest sample.

    Holding (rather than extrapolating) is what the energy edges test checks: a burst is not smeared into
    the neighbouring window.
    """
    points = sorted((t, p) for t, p in samples if t_start <= t <= t_end)
    if not points or t_end <= t_start:
        return None
    if points[0][0] > t_start:
        points.insert(0, (t_start, points[0][1]))
    if points[-1][0] < t_end:
        points.append((t_end, points[-1][1]))
    return sum((t1 - t0) * (p0 + p1) / 2.0 for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False))


def coverage(times: list[float], t_start: float, t_end: float, interval_s: float) -> float:
    """Fraction of the window covered by samples no further apart than MAX_GAP_FACTOR intervals. The window's
    edges count as samples where a sample falls inside it; a window with none inside (shorter than the interval)
    is covered where the nearest samples around it are close enough."""
    duration = t_end - t_start
    if duration <= 0:
        return 0.0
    limit = MAX_GAP_FACTOR * interval_s
    points = sorted(t for t in times if t_start <= t <= t_end)
    if not points:
        before = max((t for t in times if t < t_start), default=None)
        after = min((t for t in times if t > t_end), default=None)
        return 1.0 if before is not None and after is not None and after - before <= limit else 0.0
    edges = [t_start, *points, t_end]
    covered = sum(min(b - a, limit) if b - a <= limit else 0.0 for a, b in zip(edges, edges[1:], strict=False))
    return max(0.0, min(1.0, covered / duration))


def counter_delta_j(samples: list[tuple[float, float]], mj: bool = True) -> float | None:
    """Energy between the first and last reading of a monotonic counter (mJ by default)."""
    if len(samples) < 2:
        return None
    delta = samples[-1][1] - samples[0][1]
    return delta / 1000.0 if mj else delta
