"""The real NVML path, on a machine with an NVIDIA GPU (run on the lent GPU machine: pytest -m gpu)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU here", allow_module_level=True)

from distill_kit.energy.meter import EnergyMeter  # noqa: E402
from distill_kit.energy.sensors import NvmlGpus  # noqa: E402
from distill_kit.energy.trace import read_trace  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def load(seconds: float) -> None:
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(8):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()


def test_nvml_sees_the_gpu_with_an_energy_counter_that_advances():
    gpus = NvmlGpus.open()
    assert gpus.gpus and gpus.gpus[0].has_energy_counter and gpus.gpus[0].has_instant_power
    before = gpus.energy_mj()[0]
    load(1.0)
    assert gpus.energy_mj()[0] > before
    power = gpus.power_w()[0]
    assert 20 < power < (gpus.gpus[0].power_limit_w or 1000) * 1.1


def test_a_loaded_window_is_counter_measured_and_cross_checked(tmp_path):
    meter = EnergyMeter(interval_ms=100, use_codecarbon=False)
    assert meter.report.gpu_method == "counter"
    window = meter.begin(tmp_path, attempt=1)
    load(3.0)
    record = meter.end(window, "finished")
    gpu = record.energy["gpu"]
    assert gpu.method == "counter" and gpu.energy_j > 0
    assert gpu.cross_check is not None and abs(gpu.cross_check.rel_gap) < 0.10
    trace = read_trace(tmp_path / "trace.attempt1.csv")
    assert trace.gpu_indices() == [0]
    assert all(isinstance(r["gpu0_power_w"], float) for r in trace.rows)


def test_smoke_kd_on_the_gpu_gives_counter_figures_with_a_cross_check(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("run", "smoke-kd", "--run-dir", str(run_dir), "--runtime", "local",
                     "--set", "student.token_budget=300000", "--set", "eval.limit=100",
                     "--set", "eval.tasks=[tiny_task]")  # lm-eval is not installed on the lent GPU machine
    assert result.returncode == 0, result.output
    for stage in ("prerun", "teacher", "student", "eval"):
        summary = json.loads((run_dir / "stages" / stage / "summary.json").read_text())
        gpu = summary["energy"]["gpu"]
        assert gpu["method"] == "counter", (stage, gpu)
        for attempt in summary["attempts"]:
            assert attempt["energy"]["gpu"]["cross_check"] is not None, stage
    bundle, key = tmp_path / "smoke.tar", tmp_path / "signer"
    assert run_cli("keygen", "--out", str(key)).returncode == 0
    packed = run_cli("bundle", str(run_dir), "--out", str(bundle), "--key", f"{key}.key")
    assert packed.returncode == 0, packed.output
    verified = run_cli("verify", str(bundle), "--trusted-key", f"{key}.pub")
    print(result.stdout, verified.stdout)
    assert verified.returncode == 0, verified.output
    # the physical envelope from the accelerator table, the bundle's own evidence and the recomputed scores: PASS
    for check in ("physics", "evidence", "quality", "plausibility"):
        assert f"[PASS] {check}:" in verified.stdout, (check, verified.stdout)


def test_compiled_training_step_matches_the_eager_one(tmp_path):
    """student.compile=true (compiled decoder layers and fused chunk loss) computes the eager path's loss and
    gradients, to bf16 accuracy."""
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill_kit.training.data import Example, collate
    from distill_kit.training.trainer import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    examples = []
    for n in (40, 64, 33, 57):
        top = torch.log_softmax(torch.randn(n - 1, 512) * 2, -1).topk(16, -1)
        examples.append(Example(rng.integers(0, 512, n), (rng.random(n) > 0.2).astype(np.uint8),
                                top.indices.numpy(), top.values.numpy()))
    batch = collate(examples, 0)
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).cuda()
        config = TrainConfig(batch_size=4, grad_accum=1, seed=0, token_budget=1000, precision="bf16",
                             ce_weight=0.5, kd_weight=0.5, compile=compiled, head_chunk_rows=100)
        trainer = Trainer(model, examples, config, tmp_path / str(compiled), "cuda", 0)
        loss, _ = trainer._micro_loss(batch, batch.target_tokens)
        loss.backward()
        results[compiled] = (float(loss.detach()), torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    assert results[True][0] == pytest.approx(results[False][0], rel=2e-3)
    assert torch.nn.functional.cosine_similarity(results[True][1], results[False][1], dim=0) > 0.999


def test_cache_rows_encoded_on_the_gpu_are_those_encoded_on_the_cpu():
    """The teacher encodes on its GPU with compiled kernels, a reader decodes on the CPU: the same bytes as an
    encoding on the CPU, and the error the writer records is the error the reader gets."""
    from distill_kit.logits.codec import CodecSpec, decode, default_value_bytes, encoder
    from distill_kit.logits.teacher import topk_rows

    logits = (torch.randn(300, 100352, device="cuda") * 4).to(torch.bfloat16)
    values, indices = topk_rows(logits, 100)
    assert torch.equal(values, logits.topk(100, dim=-1).values)
    logprobs = values.float() - torch.logsumexp(logits.float(), -1, keepdim=True)
    spec = CodecSpec(100, 100352, default_value_bytes(100))
    on_gpu, gpu_error = encoder(spec, logprobs.device)(indices, logprobs)
    on_cpu, cpu_error = encoder(spec, torch.device("cpu"))(indices.cpu(), logprobs.cpu())
    got_indices, got_values = decode({name: t.cpu() for name, t in on_gpu.items()}, spec)
    decoded_error = float((got_values - logprobs.cpu()).abs().max())
    facts = {"indices exact": bool(torch.equal(got_indices, indices.cpu())), "decoded error": decoded_error,
             "recorded error": float(gpu_error), "cpu-encoded error": float(cpu_error),
             "rows whose header differs from the CPU's":
                 float((on_gpu["topk_header"].cpu() != on_cpu["topk_header"]).any(1).float().mean())}
    print(facts)
    assert facts["indices exact"], facts
    assert decoded_error == pytest.approx(float(gpu_error), rel=1e-5, abs=1e-5), facts  # GPU may fuse a*b+c
    for name, array in on_cpu.items():  # and the bytes are the CPU's: a cache does not depend on where it was made
        assert torch.equal(on_gpu[name].cpu(), array), (name, facts)
