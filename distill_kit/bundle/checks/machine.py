"""``plausibility``, ``hardware``, ``containerised`` and ``measurement``: do the figures fit the machine that
produced them, and how were they obtained?"""

from __future__ import annotations

from typing import Any

from distill_kit.bundle.context import VerifyContext, Warn, listing
from distill_kit.errors import VerificationError

POWER_LIMIT_MARGIN = 1.10  # sustained power (1 s averages) above the limit by more: FAIL; single samples: WARN
POWER_SPIKE_FACTOR = 2.0  # one instant reading above twice the limit: FAIL (no board draws that)
SUSTAINED_S = 1.0
MIN_COVERAGE = 0.75
TEMP_RANGE_C = (20.0, 95.0)  # outside: WARN
TEMP_IMPOSSIBLE_C = (-20.0, 130.0)  # outside: FAIL
CROSS_CHECK_GAP = 0.25  # counter vs integrated instant power, windows of at least CROSS_CHECK_MIN_S
CROSS_CHECK_MIN_S = 10.0
BELOW_IDLE = 0.8  # a stage's average GPU power under this fraction of idle: WARN


def max_sustained_w(power: list[tuple[float, float]], span_s: float = SUSTAINED_S) -> float | None:
    """The highest average of the readings within any ``span_s`` seconds (two pointers over time-sorted samples).

    The power limit is enforced on averages, so a single instant reading may exceed it: only sustained power is
    held to it.
    """
    points = sorted(power)
    best = None
    total = 0.0
    start = 0
    for end, (t, p) in enumerate(points):
        total += p
        while t - points[start][0] > span_s:
            total -= points[start][1]
            start += 1
        if t - points[0][0] >= span_s:  # full spans only
            average = total / (end - start + 1)
            best = average if best is None else max(best, average)
    return best


def _gpu_limits(fingerprint: dict[str, Any]) -> dict[int, float]:
    return {i: g["power_limit_w"] for i, g in enumerate(fingerprint["gpus"]) if g["power_limit_w"]}


class _Findings:
    def __init__(self) -> None:
        self.fail: list[str] = []
        self.warn: list[str] = []
        self.notes: list[str] = []  # said in a PASS


class Plausibility:
    """Readings are physically possible on the recorded machine: GPU power between 0 and its power limit (+10%),
    counters that never run backwards, temperatures 20-95 C, and sampling coverage of at least 75% per attempt."""

    name = "plausibility"

    def _trace(self, stage: str, trace: Any, limits: dict[int, float], found: _Findings) -> None:
        for i in trace.gpu_indices():
            limit = limits.get(i)
            power = trace.values(f"gpu{i}_power_w")
            negative = [p for _, p in power if p < 0]
            if negative:
                found.fail.append(f"{stage}: gpu{i} power below 0 W (got {min(negative)} W)")
            if limit is not None:
                self._limit(stage, i, power, limit, found)
            by_attempt: dict[Any, list[float]] = {}
            for row in trace.rows:
                value = row.get(f"gpu{i}_energy_mj")
                if isinstance(value, float):
                    by_attempt.setdefault(row.get("attempt"), []).append(value)
            if any(b < a for values in by_attempt.values() for a, b in zip(values, values[1:], strict=False)):
                found.fail.append(f"{stage}: gpu{i} energy counter runs backwards within an attempt")
            temps = [t for _, t in trace.values(f"gpu{i}_temp_c")]
            if temps:
                low, high = min(temps), max(temps)
                if low < TEMP_IMPOSSIBLE_C[0] or high > TEMP_IMPOSSIBLE_C[1]:
                    found.fail.append(f"{stage}: gpu{i} temperature {low:g}-{high:g} C is not physical")
                elif low < TEMP_RANGE_C[0] or high > TEMP_RANGE_C[1]:
                    found.warn.append(f"{stage}: gpu{i} temperature {low:g}-{high:g} C outside "
                                      f"{TEMP_RANGE_C[0]:g}-{TEMP_RANGE_C[1]:g} C")

    def _limit(self, stage: str, i: int, power: list[tuple[float, float]], limit: float, found: _Findings) -> None:
        margin = limit * POWER_LIMIT_MARGIN
        sustained = max_sustained_w(power)
        peak = max((p for _, p in power), default=0.0)
        if peak > limit * POWER_SPIKE_FACTOR:
            found.fail.append(f"{stage}: gpu{i} power reading of {peak:g} W, over twice its {limit:g} W limit")
        elif sustained is not None and sustained > margin:
            found.fail.append(f"{stage}: gpu{i} power above its {limit:g} W limit + 10% for {SUSTAINED_S:g} s "
                              f"(got {sustained:.1f} W, expected <= {margin:g})")
        elif peak > margin:  # transients are normal (an H100 read 774 W against 700 W in a matmul burn-in)
            spikes = sum(p > margin for _, p in power)
            found.notes.append(f"{stage}: gpu{i} {spikes} transient reading(s) up to {peak:g} W, 1 s averages "
                               f"within its {limit:g} W limit")

    def _attempts(self, stage: str, summary: dict[str, Any], limits: dict[int, float], idle_gpu_w: float | None,
                  found: _Findings) -> None:
        limit_total = sum(limits.values()) if limits else None
        for a in summary["attempts"]:
            label = f"{stage} attempt {a['attempt']}"
            if a["coverage"] < MIN_COVERAGE:  # a thinned trace can hide what the figures would show: FAIL
                found.fail.append(f"{label}: sampling coverage (got {a['coverage']:.0%}, expected >= "
                                  f"{MIN_COVERAGE:.0%})")
            for domain, figure in a["energy"].items():
                if figure["energy_j"] is not None and figure["energy_j"] < 0:
                    found.fail.append(f"{label}: negative {domain} energy (got {figure['energy_j']} J)")
            gpu = a["energy"]["gpu"]
            if gpu["energy_j"] is None or a["duration_s"] <= 0:
                continue
            average = gpu["energy_j"] / a["duration_s"]
            if limit_total and average > limit_total * POWER_LIMIT_MARGIN:
                found.fail.append(f"{label}: average GPU power {average:.1f} W above the power limits "
                                  f"({limit_total:g} W + 10%)")
            if idle_gpu_w and summary["kind"] != "prerun" and a["duration_s"] >= CROSS_CHECK_MIN_S \
                    and average < BELOW_IDLE * idle_gpu_w:
                found.warn.append(f"{label}: average GPU power {average:.1f} W is below idle ({idle_gpu_w:.1f} W)")
            check = gpu.get("cross_check")
            if check and check.get("rel_gap") is not None and a["duration_s"] >= CROSS_CHECK_MIN_S \
                    and abs(check["rel_gap"]) > CROSS_CHECK_GAP:
                found.warn.append(f"{label}: GPU counter and integrated instant power differ by "
                                  f"{check['rel_gap']:+.0%}")

    def check(self, ctx: VerifyContext) -> str | Warn:
        fingerprint = ctx.fingerprint()
        limits = _gpu_limits(fingerprint)
        found = _Findings()
        samples = 0
        for stage in ctx.stage_names():
            summary = ctx.stage_summary(stage)
            trace = ctx.trace(stage)
            samples += len(trace.rows)
            self._trace(stage, trace, limits, found)
            idle = (summary["idle_power_w"] or {}).get("gpu")
            self._attempts(stage, summary, limits, idle, found)
        if found.fail:
            raise VerificationError("; ".join(found.fail[:6]))
        if found.warn:
            return Warn("; ".join(found.warn[:6]) + (f" (+{len(found.warn) - 6} more)" if len(found.warn) > 6
                                                     else ""))
        limit = f"{sum(limits.values()):g} W of GPU power limits" if limits else "no GPU power limit recorded"
        notes = "".join(f"; {note}" for note in found.notes[:3])
        return f"{samples} samples plausible ({limit}); coverage >= {MIN_COVERAGE:.0%} in every attempt{notes}"


class Hardware:
    """The recorded machine meets the manifest's hardware requirements (accelerator, GPU count, model, memory)."""

    name = "hardware"

    def check(self, ctx: VerifyContext) -> str:
        wanted = ctx.resolved().get("hardware") or {}
        fingerprint = ctx.fingerprint()
        gpus = fingerprint["gpus"]
        problems = []
        if wanted.get("accelerator") == "cuda" and not gpus:
            problems.append(f"the manifest needs a CUDA GPU (got none: {fingerprint['gpu_reason'] or 'no GPU'})")
        count = wanted.get("gpu_count") or 0
        if len(gpus) < count:
            problems.append(f"GPUs (got {len(gpus)}, expected at least {count})")
        models = wanted.get("gpu_models") or []
        if models and gpus:
            odd = [g["name"] for g in gpus if not any(m.lower() in g["name"].lower() for m in models)]
            if odd:
                problems.append(f"GPU model (got {listing(odd, 3)}, expected one of {', '.join(models)})")
        memory = wanted.get("min_gpu_memory_gib")
        if memory and gpus:
            small = [g for g in gpus if g["memory_gib"] < memory]
            if small:
                problems.append(f"GPU memory (got {small[0]['memory_gib']} GiB, expected >= {memory} GiB)")
        if problems:
            raise VerificationError("; ".join(problems))
        if not gpus:
            return f"the manifest's requirements are met without a GPU (CPU: {fingerprint['cpu']['model']})"
        return f"{len(gpus)} GPU(s) meet the manifest's requirements ({', '.join(sorted({g['name'] for g in gpus}))})"


CONTAINER_RUNTIMES = ("docker", "apptainer")


def container_evidence(fingerprint: dict[str, Any]) -> list[str]:
    """What a run inside the kit's image records and this fingerprint lacks: the runtime that started it, the
    image's id or digest (the runtime passes them in), the kit installed from the image (its build writes
    _build_info.json: source "image"), and a container marker file (/.dockerenv, /run/.containerenv) when one
    was looked for."""
    container = fingerprint["container"]
    missing = []
    if container["runtime"] not in CONTAINER_RUNTIMES:
        missing.append(f"runtime (got {container['runtime']!r}, expected one of {', '.join(CONTAINER_RUNTIMES)})")
    if not (container.get("image_digest") or container.get("image_id")):
        missing.append("image (got no image digest or id, expected the one the runtime records)")
    if fingerprint["kit"].get("source") != "image":
        missing.append(f"kit source (got {fingerprint['kit'].get('source')!r}, expected 'image': the kit "
                       "installed in the image)")
    if container.get("runtime") == "docker" and container.get("host_is_container") is False:
        missing.append("container marker (got no /.dockerenv, expected one in a Docker container)")
    return missing


class Containerised:
    """The run executed inside the kit's container (a local run is reported, not failed; a claim the recorded
    runtime, image and kit source do not support fails)."""

    name = "containerised"

    def check(self, ctx: VerifyContext) -> str | Warn:
        fingerprint = ctx.fingerprint()
        container = fingerprint["container"]
        if not container["inside"]:
            return Warn(f"run was not containerised (runtime {container['runtime']})")
        unsupported = container_evidence(fingerprint)
        if unsupported:
            raise VerificationError("containerised is claimed but the evidence does not support it: "
                                    + "; ".join(unsupported))
        image = container.get("image_digest") or container.get("image") or "image digest not recorded"
        return f"run inside a container ({image})"


class Measurement:
    """How each domain's energy was obtained: counters or integrated power pass; estimates and unmeasured domains
    are listed (a WARN, never a FAIL)."""

    name = "measurement"

    @staticmethod
    def _between(totals: dict[str, Any], weak: dict[str, set[str]]) -> None:
        """The energy between stages: absent (an older kit's summary), estimated or partial."""
        between = totals.get("between_stages")
        if between is None:
            weak.setdefault("between stages not measured (no run window)", set()).add("run")
            return
        for domain, figure in between["energy"].items():
            if figure["method"] in ("estimate", "unmeasured"):
                weak.setdefault(f"{domain} {figure['method']}", set()).add("between stages")
            if figure.get("partial"):
                weak.setdefault(f"{domain} partial", set()).add("between stages")

    def check(self, ctx: VerifyContext) -> str | Warn:
        weak: dict[str, set[str]] = {}
        methods: dict[str, set[str]] = {}
        for stage in ctx.stage_names():
            for domain, figure in ctx.stage_summary(stage)["energy"].items():
                methods.setdefault(domain, set()).add(figure["method"])
                if figure["method"] in ("estimate", "unmeasured"):
                    weak.setdefault(f"{domain} {figure['method']}", set()).add(stage)
                if figure.get("partial"):  # a sensor gap or a killed attempt: the figure is a lower bound
                    weak.setdefault(f"{domain} partial", set()).add(stage)
        self._between(ctx.summary()["totals"], weak)
        described = "; ".join(f"{d}: {'/'.join(sorted(m))}" for d, m in sorted(methods.items()))
        if weak:
            return Warn("not measured by a counter, or partial: " + "; ".join(
                f"{what} (in {', '.join(sorted(stages))})" for what, stages in sorted(weak.items())))
        return f"every domain measured ({described})"


def provenance_claims(ctx: VerifyContext, item: Any, source: str, why: str) -> list[str]:
    """What the provenance beside a score (the stage's ``tasks[*].provenance`` and summary.json's
    ``quality_provenance``) claims against what the records show: its data source and n."""
    model, task = item.detail["model"], item.detail["task"]
    summary = ((ctx.summary().get("quality_provenance") or {}).get(model) or {}).get(task)
    claims = [c for c in (item.detail.get("provenance"), summary) if isinstance(c, dict)]
    n = len(item.records) if item.records is not None else None
    problems = {f"{item.label}: provenance source (got {c.get('source')!r}, expected {source!r}: {why})"
                for c in claims if c.get("source") != source}
    problems |= {f"{item.label}: provenance n (got {c.get('n')}, expected {n}, the number of records)"
                 for c in claims if n is not None and c.get("n") != n}
    return sorted(problems)


class Evaluation:
    """Quality figures come from full evaluations, derived (never read from the run's ``full`` flag): the
    per-sample records must cover the pinned benchmark's known size, on data that is not the kit's fixtures; a task
    claiming ``full: true`` that is not is a FAIL, a subset or fixture evaluation a WARN. The provenance beside each
    score must say the same source (full / subset / fixture) and n as the records show."""

    name = "evaluation"

    def check(self, ctx: VerifyContext) -> str | Warn:
        from distill_kit.bundle.checks.eval_evidence import derive_source, eval_stages, task_evidence

        items = task_evidence(ctx)
        if not items:
            return "no evaluation in this run"
        fail: list[str] = []
        subsets: dict[str, list[str]] = {}  # "task (why)" -> models
        for item in items:
            source, why = derive_source(ctx, item)
            full = source == "full"
            if item.detail.get("full") is True and not full:
                fail.append(f"{item.label}: full (got true, expected false: {why})")
            fail += provenance_claims(ctx, item, source, why)
            if not full:
                subsets.setdefault(f"{item.detail['task']} ({why})", []).append(item.detail["model"])
        for stage in eval_stages(ctx):
            claimed = (ctx.stage_summary(stage).get("outputs") or {}).get("full_evaluation")
            if claimed is True and subsets:
                fail.append(f"{stage}: full_evaluation (got true, expected false)")
        if fail:
            raise VerificationError("; ".join(fail[:6]) + (f" (+{len(fail) - 6} more)" if len(fail) > 6 else ""))
        if subsets:
            return Warn("not a full evaluation: " + "; ".join(f"{what} for {', '.join(models)}"
                                                              for what, models in subsets.items()))
        return f"{len(items)} (model, task) evaluations, all full (derived from their records against the " \
               "benchmarks' known sizes)"
