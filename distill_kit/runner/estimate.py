"""``distill-kit estimate``: a short calibrated rehearsal of each stage on this machine, then the full run's cost.

The model (docs/estimate.md): a stage's loop is split into its warm-up (the first ``WARMUP_FRACTION`` of its items:
compilation, allocator growth, clocks) and its steady state, cut into ``WINDOWS`` windows. Each window gives a
throughput (tokens/s) and an energy per token (its mean power over its tokens/s); their pooled values are the
stage's steady rates and their extremes the interval. What the stage spent outside its steady rate (set-up,
warm-up, saving) is a fixed cost. The full run's stage then takes ``fixed + N / rate`` seconds and
``fixed_J + N * J/token`` joules for its full token count N. The teacher's generation (synthetic-data SFT) is
timed the same way, its items being decoded batches and its tokens generated tokens. The prerun is scaled to the
manifest's idle and burn-in seconds; evaluation follows the per-task model of runner/eval_estimate.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distill_kit import rundir_layout as layout
from distill_kit._io import read_json
from distill_kit.manifest.settings import Settings
from distill_kit.runner.predictions import Interval, StagePrediction, stage_energy_j
from distill_kit.runner.timing import Loop, TimingProgress

WARMUP_FRACTION = 0.2
WINDOWS = 4
LOOPS = {"teacher_logits": "teacher:", "teacher_generation": "teacher:", "kd": "training", "sft": "training"}


@dataclass
class Window:
    seconds: float
    tokens: int
    power_w: float | None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def j_per_token(self) -> float | None:
        return self.power_w / self.tokens_per_s if self.power_w is not None and self.tokens_per_s else None


@dataclass
class StageCalibration:
    stage: str
    kind: str
    token_kind: str
    tokens: int
    wall_s: float
    energy_j: float | None
    windows: list[Window] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # the eval stage's (its forward and decode windows)
    fingerprint: str | None = None  # what decides its cost, and the machine (runner/calibration_reuse.py)
    reused_from: dict[str, Any] | None = None  # the earlier estimate it was taken from (--reuse)

    @property
    def steady(self) -> bool:
        return bool(self.windows)

    @property
    def tokens_per_s(self) -> float | None:
        seconds = sum(w.seconds for w in self.windows)
        return sum(w.tokens for w in self.windows) / seconds if seconds > 0 else None

    @property
    def j_per_token(self) -> float | None:
        if not self.windows or any(w.power_w is None for w in self.windows):
            return None
        energy = sum((w.power_w or 0.0) * w.seconds for w in self.windows)
        tokens = sum(w.tokens for w in self.windows)
        return energy / tokens if tokens else None

    def fixed(self) -> tuple[float, float | None]:
        """Seconds and joules spent outside the steady rate (set-up, warm-up, saving); never below zero."""
        rate, jpt = self.tokens_per_s, self.j_per_token
        seconds = max(0.0, self.wall_s - self.tokens / rate) if rate else self.wall_s
        joules = None
        if self.energy_j is not None:
            joules = max(0.0, self.energy_j - self.tokens * jpt) if jpt is not None else self.energy_j
        return seconds, joules

    def to_dict(self) -> dict[str, Any]:
        fixed_s, fixed_j = self.fixed()
        return {"stage": self.stage, "kind": self.kind, "token_kind": self.token_kind, "tokens": self.tokens,
                "wall_s": self.wall_s, "energy_j": self.energy_j, "tokens_per_s": self.tokens_per_s,
                "j_per_token": self.j_per_token, "fixed_s": fixed_s, "fixed_j": fixed_j,
                "windows": [{**asdict(w), "tokens_per_s": w.tokens_per_s, "j_per_token": w.j_per_token}
                            for w in self.windows],
                **({"outputs": self.outputs} if self.outputs else {}),
                "fingerprint": self.fingerprint, "reused_from": self.reused_from}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> StageCalibration:
        """An earlier estimate's calibration (``to_dict``), as ``--reuse`` takes it."""
        windows = [Window(float(w["seconds"]), int(w["tokens"]), w.get("power_w")) for w in entry["windows"]]
        return cls(entry["stage"], entry["kind"], entry["token_kind"], int(entry["tokens"]), float(entry["wall_s"]),
                   entry.get("energy_j"), windows, entry.get("outputs") or {}, entry.get("fingerprint"),
                   entry.get("reused_from"))


def _item_tokens(loop: Loop, summary: dict[str, Any]) -> list[int]:
    """Tokens of each item of a stage's loop: teacher items carry theirs; training steps from the loss curve."""
    if all(tokens is not None for _, tokens in loop.marks):
        return [int(tokens or 0) for _, tokens in loop.marks]
    curve = summary["outputs"].get("loss_curve") or []
    cumulative = [0] + [int(entry["trained_tokens"]) for entry in curve]
    steps = [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]
    return steps[-len(loop.marks):] if len(steps) >= len(loop.marks) else steps + [0] * (len(loop.marks) - len(steps))


def _mean_power(run_dir: Path, summary: dict[str, Any], t0: float, t1: float) -> float | None:
    """The stage's mean power over [t0, t1]: GPUs from the trace's samples, CPU and RAM at the stage's mean."""
    from distill_kit.energy.trace import read_trace

    power, any_domain = 0.0, False
    for domain in ("cpu", "ram"):
        figure = summary["energy"].get(domain) or {}
        if figure.get("energy_j") is not None and summary["wall_time_s"]:
            power += figure["energy_j"] / summary["wall_time_s"]
            any_domain = True
    trace_path = run_dir / layout.stage_file(summary["stage"], layout.TRACE)
    if trace_path.exists() and (summary["energy"].get("gpu") or {}).get("energy_j") is not None:
        trace = read_trace(trace_path).window(t0, t1)
        for index in trace.gpu_indices():
            values = [v for _, v in trace.values(f"gpu{index}_power_w")]
            if not values:
                return None
            power += sum(values) / len(values)
            any_domain = True
    return power if any_domain else None


def _windows(run_dir: Path, summary: dict[str, Any], loop: Loop) -> list[Window]:
    tokens = _item_tokens(loop, summary)
    times = [t for t, _ in loop.marks]
    if summary["kind"] == "teacher_generation":
        # not pipelined: each mark ends one decoded batch, so the first mark closes the warm-up batch and the last
        # is a batch like the others (each one is a minute or more of a 32B's decode: none is wasted)
        first = 0
    else:
        # the last item is the drain of a pipelined loop (the teacher yields batch i once batch i+1 is queued): no
        # compute of its own, so it is left out
        times = times[:-1]
        first = max(1, int(len(times) * WARMUP_FRACTION))
    if len(times) - first < 2:
        return []
    count = min(WINDOWS, len(times) - first)
    edges = [first + round(i * (len(times) - 1 - first) / count) for i in range(count + 1)]
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        if b <= a:
            continue
        t0, t1 = times[a], times[b]
        out.append(Window(t1 - t0, sum(tokens[a + 1 : b + 1]), _mean_power(run_dir, summary, t0, t1)))
    return out


def calibrations(run_dir: Path, timing: TimingProgress) -> list[StageCalibration]:
    """Each stage of a finished rehearsal, with the steady windows of its main loop."""
    if (run_dir / layout.SUMMARY).exists():
        names = [entry["stage"] for entry in read_json(run_dir / layout.SUMMARY)["stages"]]
    else:  # a run stopped after a stage: the stages finished so far
        names = sorted(p.parent.name for p in (run_dir / layout.STAGES).glob(f"*/{layout.STAGE_SUMMARY}"))
    out = []
    for name in names:
        summary = read_json(run_dir / layout.stage_file(name, layout.STAGE_SUMMARY))
        prefix = LOOPS.get(summary["kind"])
        loop = timing.loop(prefix) if prefix else None
        wall, energy = _last_attempt(summary)
        out.append(StageCalibration(summary["stage"], summary["kind"], summary["token_kind"], summary["tokens"],
                                    wall, energy, _windows(run_dir, summary, loop) if loop else [],
                                    summary["outputs"] if summary["kind"] == "eval" else {}))
    return out


RESUME_MARKS = ("resumed_after_sequences", "resumed_after_prompts", "resumed_from_step")


def _last_attempt(summary: dict[str, Any]) -> tuple[float, float | None]:
    """Seconds and joules of the stage as calibrated: a stage of a resumed calibration (``estimate --resume``) that
    was cut off ran again from its start (its caps stay below the first logit or generation shard and the first
    checkpoint), so its last attempt is the whole stage and the cut one is not counted."""
    attempts = summary.get("attempts") or []
    if len(attempts) <= 1:
        return summary["wall_time_s"], stage_energy_j(summary)
    if any(summary["outputs"].get(key) for key in RESUME_MARKS):
        from distill_kit.errors import InvalidInput

        raise InvalidInput(f"the calibration's {summary['stage']} stage resumed part-way through (a shard or "
                           "checkpoint of the cut attempt was kept), so no attempt times the whole stage: start "
                           "the estimate again in a new --run-dir")
    last = attempts[-1]
    return float(last["duration_s"]), stage_energy_j(last)  # an attempt's "energy" has the summary's shape


def predict_stage(calibration: StageCalibration, tokens: int | None) -> StagePrediction:
    """The stage at ``tokens`` full-run tokens: fixed cost + tokens at the steady rates (interval: the windows'
    extreme rates)."""
    c = calibration
    if tokens is not None and not (c.steady and c.tokens_per_s) and c.tokens > 0 and c.wall_s > 0:
        # too few items for steady windows: the whole stage's average, set-up included, stands for the rate (an
        # overestimate, said so) rather than the stage being taken as rehearsed (a 1000x underestimate)
        whole_s = tokens * c.wall_s / c.tokens
        whole_j = Interval(*[tokens * c.energy_j / c.tokens] * 3) if c.energy_j is not None else None
        return StagePrediction(c.stage, c.kind, tokens, Interval(whole_s, whole_s, whole_s), whole_j,
                               f"no steady windows (too few items): {tokens:,} tokens at the calibration's whole-stage "
                               f"{c.tokens / c.wall_s:,.0f} tokens/s, set-up included (an overestimate; raise "
                               "--calibration-tokens)")
    if not c.steady or tokens is None or not c.tokens_per_s:
        energy = Interval(c.energy_j, c.energy_j, c.energy_j) if c.energy_j is not None else None
        return StagePrediction(c.stage, c.kind, None, Interval(c.wall_s, c.wall_s, c.wall_s), energy, "as rehearsed")
    fixed_s, fixed_j = c.fixed()
    rates = [w.tokens_per_s for w in c.windows if w.tokens_per_s > 0]
    seconds = Interval(fixed_s + tokens / max(rates), fixed_s + tokens / c.tokens_per_s,
                       fixed_s + tokens / min(rates))
    energy = None
    jpts = [w.j_per_token for w in c.windows if w.j_per_token is not None]
    if c.j_per_token is not None and fixed_j is not None and jpts:
        energy = Interval(fixed_j + tokens * min(jpts), fixed_j + tokens * c.j_per_token,
                          fixed_j + tokens * max(jpts))
    basis = (f"fixed {fixed_s:.1f} s + {tokens:,} tokens at {c.tokens_per_s:,.0f} tokens/s "
             f"(windows {min(rates):,.0f}-{max(rates):,.0f})")
    return StagePrediction(c.stage, c.kind, tokens, seconds, energy, basis)


SCALING_EFFICIENCY = 0.95  # per GPU added, data parallel: 1.89-1.94x on 2 H200s (shared FIELD_NOTES, 1.2B shape)
# about a minute a stage on one H200 at kd_32b_1b's shapes; the student's steps vary with their sequences' lengths,
# so fewer than ~20 steady steps gave windows 2x apart (benchmarks/results/estimate_kd_32b_1b.json at 300k)
DEFAULT_CALIBRATION = {"teacher_tokens": 400_000, "student_tokens": 400_000, "eval_tokens": 8192}  # KD
CPU_CALIBRATION = {"teacher_tokens": 20_000, "student_tokens": 20_000, "eval_tokens": 1024}
# Teacher generation is calibrated in decoded batches, not tokens: 400k prompt tokens would be hundreds of batches
# of a 32B teacher (hours). A batch decodes as long as its longest drawn answer: under tulu-3's assumed shape
# (median 512 tokens, 60% answer, cut at 1,024) a sequence reaches the cut with probability ~0.25, so a batch of 64
# (base.yaml's teacher.generation.batch_size) all but surely runs the longest answer there is, 614 steps. Measured
# on one H200 (2026-12-01, 71e2f60): at batch 4, 24 prompts decoded 3,329 steps in 341 s (~100 ms a step, 22
# generated tokens/s); the step is launch-bound, so at 64 a batch was expected to take ~60-75 s. At d1914ba a
# 5-batch calibration of sft_32b_1b ran out of a 560 s call in its eval; at d9dd5af a steady batch of 64 took
# 75-80 s (~125 ms a step, 272 generated tokens/s). The cap is therefore exactly GENERATION_CALIBRATION_BATCHES x
# batch_size prompts (the prompt tokens of the first ones the rehearsal draws): 4 batches leave, after the warm-up
# batch (ended by the first mark), 3 one-batch windows (_windows below), and keep a 32B calibration inside one
# 10-minute call. An explicit teacher_tokens cap (--calibration-tokens) overrides it (prompt tokens).
GENERATION_CALIBRATION_BATCHES = 4
CALIBRATION_PRERUN = ["energy.idle_seconds=5", "energy.burn_in_seconds=3"]


def full_tokens(document: dict[str, Any]) -> dict[str, int | None]:
    """The full run's tokens per stage kind: teacher forward tokens = rows x mean length (cut at the teacher's
    sequence length); generated tokens = rows x samples x mean answer (the answer share of the lengths, cut at
    max_new_tokens); trained tokens = the student's token budget, else epochs x rows x mean length x loss share,
    or in the sft pipeline epochs x the generated tokens (the loss is on the teacher's answers)."""
    from distill_kit.rehearsal.generation import mean_answer_tokens
    from distill_kit.rehearsal.substitute import train_lengths

    train = document["data"].get("train")
    if train is None:
        return {}
    settings = Settings.of(document)
    teacher_len = settings.teacher.max_seq_len
    student_len = settings.student.max_seq_len
    lengths = train_lengths(document, teacher_len)
    rows = min(x for x in (train.get("max_examples"), lengths.rows) if x) if (train.get("max_examples")
                                                                             or lengths.rows) else None
    teacher = int(rows * lengths.mean_length(teacher_len)) if rows else None
    generation = settings.teacher.generation
    answer = mean_answer_tokens(lengths, teacher_len, generation.max_new_tokens)
    generated = int(rows * generation.num_samples * answer) if rows else None
    trained = settings.student.token_budget
    if trained is None and rows and settings.student.epochs:
        per_epoch = (generated if document["pipeline"] == "sft" and generated is not None
                     else rows * lengths.mean_length(student_len) * lengths.target_share)
        trained = int(float(settings.student.epochs) * per_epoch)
    return {"teacher_logits": teacher, "teacher_generation": generated, "kd": trained, "sft": trained}


def calibration_caps(document: dict[str, Any], caps: dict[str, int]) -> dict[str, int]:
    """The calibration's caps; a generating teacher's prompt tokens are those of the first
    ``GENERATION_CALIBRATION_BATCHES`` batches of prompts the rehearsal draws (exactly that many batches)."""
    if document["pipeline"] != "sft" or document["data"].get("train") is None:
        return caps
    from distill_kit.rehearsal.generation import first_prompts_tokens
    from distill_kit.rehearsal.substitute import train_lengths

    teacher = Settings.of(document).teacher
    count = min(1024, GENERATION_CALIBRATION_BATCHES * teacher.generation.batch_size)
    tokens = first_prompts_tokens(train_lengths(document, teacher.max_seq_len), teacher.max_seq_len, count,
                                  int(document["seed"]))
    return {**caps, "teacher_tokens": max(1, tokens)}


@dataclass
class Estimate:
    name: str
    gpus: int
    country: str
    carbon_g_per_kwh: float | None
    stages: list[StagePrediction]
    calibration: list[StageCalibration]
    full_tokens: dict[str, int | None]

    def _scaled_seconds(self, prediction: StagePrediction) -> Interval:
        """Wall time on ``gpus`` GPUs: the token-bound stages split their tokens over the GPUs."""
        if prediction.tokens is None or self.gpus == 1:
            return prediction.seconds
        return prediction.seconds.scaled(1 / (self.gpus * SCALING_EFFICIENCY ** (self.gpus - 1)))

    def totals(self) -> dict[str, Any]:
        seconds = [self._scaled_seconds(p) for p in self.stages]
        energy = [p.energy_j for p in self.stages]
        total_s = Interval(*(sum(getattr(s, k) for s in seconds) for k in ("low", "mid", "high")))
        out: dict[str, Any] = {"wall_hours": asdict(total_s.scaled(1 / 3600)),
                               "gpu_hours": asdict(total_s.scaled(self.gpus / 3600))}
        if all(e is not None for e in energy):
            kwh = Interval(*(sum(getattr(e, k) for e in energy) / 3.6e6 for k in ("low", "mid", "high")))
            out["energy_kwh"] = asdict(kwh)
            if self.carbon_g_per_kwh is not None:
                out["co2_kg"] = asdict(kwh.scaled(self.carbon_g_per_kwh / 1000))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "name": self.name, "gpus": self.gpus, "country": self.country,
                "carbon_g_per_kwh": self.carbon_g_per_kwh, "scaling_efficiency_per_gpu": SCALING_EFFICIENCY,
                "full_tokens": self.full_tokens, "stages": [p.to_dict() for p in self.stages],
                "totals": self.totals(), "calibration": [c.to_dict() for c in self.calibration],
                "model": "docs/estimate.md"}


def carbon_intensity(country: str) -> float | None:
    """g CO2 per kWh of the country's electricity mix, from CodeCarbon's data (None where it has none)."""
    try:
        from codecarbon.input import DataSource

        mix = DataSource().get_global_energy_mix_data()  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - CodeCarbon missing or its data unreadable: no CO2 figure, said so
        return None
    entry = mix.get(country.upper())
    return float(entry["carbon_intensity"]) if entry else None


def _prerun(calibration: StageCalibration, document: dict[str, Any]) -> StagePrediction:
    """The prerun at the manifest's idle and burn-in seconds, at the calibration prerun's mean power."""
    energy = Settings.of(document).energy
    seconds = energy.idle_seconds + energy.burn_in_seconds
    scale = seconds / calibration.wall_s if calibration.wall_s else 1.0
    joules = calibration.energy_j * scale if calibration.energy_j is not None else None
    return StagePrediction(calibration.stage, calibration.kind, None, Interval(seconds, seconds, seconds),
                           Interval(joules, joules, joules) if joules is not None else None,
                           "the manifest's idle + burn-in seconds at the calibration's mean power")


def predict(document: dict[str, Any], calibration: list[StageCalibration], gpus: int, country: str,
            tokens: dict[str, int | None]) -> Estimate:
    from distill_kit.runner.eval_estimate import predict_eval

    stages = []
    for c in calibration:
        if c.kind == "prerun":
            prediction = _prerun(c, document)
        elif c.kind == "eval":
            prediction = predict_eval(c, document)
        else:
            prediction = predict_stage(c, tokens.get(c.kind))
        if c.reused_from:
            source = c.reused_from
            prediction.basis += (f"; calibration reused from the identical stage of {source.get('estimate')}'s "
                                 f"estimate ({source.get('measured') or 'date not recorded'})")
        stages.append(prediction)
    return Estimate(document["name"], gpus, country, carbon_intensity(country), stages, calibration, tokens)


def _reused(entry: dict[str, Any]) -> StageCalibration:
    try:
        return StageCalibration.from_dict(entry)
    except (KeyError, TypeError, ValueError) as err:  # an edited or damaged file: named, not a traceback
        from distill_kit.errors import InvalidInput

        raise InvalidInput(f"--reuse {entry['reused_from'].get('file')}: its {entry.get('stage')!r} calibration "
                           f"is incomplete ({type(err).__name__}: {err})") from err


TIMING_FILE = "estimate_timing.json"  # in the calibration's run directory: the finished stages' loop timestamps


def estimate(manifest: str, run_dir: Path, gpus: int = 1, country: str | None = None,
             caps: dict[str, int] | None = None, tokens: dict[str, int | None] | None = None,
             overrides: list[str] | None = None, progress: Any = None, reuse: list[Path] | None = None,
             resume: bool = False) -> Estimate:
    """Calibrate by a short rehearsal into ``run_dir``, then predict the full run (see the module docstring);
    stages whose calibration an earlier estimate in ``reuse`` holds are taken from it (runner/calibration_reuse.py).
    ``resume`` continues a calibration that was cut off in ``run_dir`` (same manifest, caps and overrides): its
    finished stages and their loops' timestamps (:data:`TIMING_FILE`, written after every stage) are kept, the cut
    stage runs again from its start."""
    import torch

    from distill_kit.manifest import load_manifest
    from distill_kit.runner.calibration_reuse import fingerprint, load_reusable, machine_identity, stage_inputs
    from distill_kit.runner.plan import plan
    from distill_kit.runner.rehearse import rehearsal_manifest, rehearse

    reusable = load_reusable(reuse or [])  # a bad file is refused before anything runs
    document = load_manifest(manifest, overrides or []).document  # the run as it will be, not the calibration
    default = calibration_caps(document, DEFAULT_CALIBRATION if torch.cuda.is_available() else CPU_CALIBRATION)
    all_caps, sets = {**default, **(caps or {})}, [*CALIBRATION_PRERUN, *(overrides or [])]
    calibration_manifest = rehearsal_manifest(manifest, all_caps, sets)
    machine = machine_identity()
    stages = plan(calibration_manifest)
    prints: dict[str, str] = {}
    for stage in stages:
        inputs = stage_inputs(calibration_manifest.document, stage.kind)
        if inputs is not None:
            prints[stage.name] = fingerprint(inputs, machine)
    taken = {name: _reused(reusable[fp]) for name, fp in prints.items() if fp in reusable}
    names = [stage.name for stage in stages]
    stop_after = None
    if any(stage.name in taken and stage.kind in ("teacher_logits", "teacher_generation") for stage in stages):
        sets.append("rehearsal.stand_in_teacher=true")  # its outputs for the stages after it, not its cost
    if stages[-1].kind == "eval" and stages[-1].name in taken and len(stages) > 1:
        stop_after = names[-2]  # a reused evaluation is the last stage: the rehearsal stops before it
    timing = TimingProgress(progress)
    timing_path = Path(run_dir) / TIMING_FILE
    if resume and timing_path.exists():
        try:
            timing.restore(read_json(timing_path))
        except (ValueError, KeyError, TypeError) as err:  # edited or damaged: named, not a traceback
            from distill_kit.errors import InvalidInput

            raise InvalidInput(f"{timing_path} is not the calibration's timing file ({type(err).__name__}: {err}): "
                               "start the estimate again in a new --run-dir") from err
    rehearsed = rehearse(manifest, run_dir, all_caps, sets, progress, stop_after=stop_after, resume=resume,
                         timing=timing, timing_path=timing_path)
    measured = {c.stage: c for c in calibrations(rehearsed.run_dir, rehearsed.timing)}
    result = []
    for name in names:
        calibration = taken.get(name) or measured.get(name)
        if calibration is None:
            continue
        if name not in taken:
            calibration.fingerprint = prints.get(name)
        result.append(calibration)
    full = {**full_tokens(document), **{k: v for k, v in (tokens or {}).items() if v is not None}}
    return predict(document, result, gpus, country or Settings.of(document).country_iso_code, full)
