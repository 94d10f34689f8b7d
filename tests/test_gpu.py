"""The GPU path, on a machine with CUDA (skipped elsewhere): training with bf16 autocast, fused AdamW, torch.compile and
SDPA's flash kernel against the float32 CPU run of the same model; exact resume on the GPU; FSDP and DDP on NCCL.

Run on a GPU machine with `pytest -m gpu tests/test_gpu.py` (a few minutes, torch.compile included)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
TEXT = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.\n" * 30


@pytest.fixture
def config(tmp_path, monkeypatch):
    from modernlm.training import TrainConfig

    monkeypatch.setenv("MODERNLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "zen.txt").write_text(TEXT)

    def make(name: str, **overrides) -> TrainConfig:
        values = dict(
            out_dir=str(tmp_path / name), data=[str(tmp_path / "zen.txt")], val_fraction=0.0, vocab_size=300,
            model="llama-tiny", model_overrides={"d_model": 64, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 64},
            seq_len=64, batch_size=8, max_steps=6, warmup_steps=2, lr=3e-3, eval_interval=0, save_interval=2,
            sample_tokens=0, progress=False, log_interval=1,
        )  # fmt: skip
        return TrainConfig(**{**values, **overrides})

    return make


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def test_bf16_compiled_cuda_training_follows_the_float32_cpu_run(config):
    from modernlm.training import train

    cpu = train(config("cpu"))
    gpu = train(config("gpu", device="cuda", precision="bf16", compile=True))
    assert gpu.status == "done"
    # the same initial weights and batches: the first loss agrees to bf16's precision, the run stays close
    assert abs(gpu.losses[0] - cpu.losses[0]) < 2e-2 * cpu.losses[0]
    assert all(abs(g - c) < 0.1 * c for g, c in zip(gpu.losses, cpu.losses, strict=True))


def test_fused_adamw_and_the_flash_kernel_on_cuda():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from modernlm import Transformer, preset
    from modernlm.training.optim import build_optimizer
    from modernlm.training.trainer import next_token_loss

    model = Transformer(preset("llama-tiny", d_model=128, n_heads=2, n_kv_heads=1, max_seq_len=128)).cuda()
    optimizer = build_optimizer(model, 1e-3, 0.1)
    assert optimizer.defaults["fused"] is True
    ids = torch.randint(0, model.config.vocab_size, (2, 129), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])  # fails if the causal training call cannot take the flash kernel
    next_token_loss(logits, ids[:, 1:]).backward()
    optimizer.step()
    assert all(p.isfinite().all() for p in model.parameters())


def test_cuda_resume_gives_the_losses_of_a_straight_run(config):
    from modernlm.training import train

    straight = train(config("a", device="cuda", precision="bf16"))
    first = train(config("b", device="cuda", precision="bf16"), stop_at_step=3)
    second = train(config("b", device="cuda", precision="bf16"), resume=True)
    torch.testing.assert_close(first.losses + second.losses, straight.losses, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_one_gpu_nccl_group_trains_and_matches_the_plain_run(config, mode):
    """A group of one on NCCL (no torchrun): the distributed path on a GPU, against the plain GPU run."""
    from modernlm.distributed import train as distributed_train
    from modernlm.training import train

    plain = train(config("plain", device="cuda"))
    result = distributed_train(config(mode, device="cuda", parallel=mode))
    assert result.status == "done"
    torch.testing.assert_close(result.losses, plain.losses, rtol=1e-4, atol=1e-4)


def test_attentions_on_cuda_equal_the_cpu_ones():
    """output_attentions on the GPU (the explicit softmax there, SDPA's CUDA kernels otherwise) against the CPU."""
    from modernlm import Transformer, preset

    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        cpu = model(ids, output_attentions=True, output_hidden_states=True)
        model.cuda()
        gpu = model(ids.cuda(), output_attentions=True, output_hidden_states=True)
        plain = model(ids.cuda())
    assert type(plain) is torch.Tensor
    torch.testing.assert_close(plain.cpu(), cpu.logits, atol=1e-3, rtol=1e-3)
    for a, b in zip(gpu.attentions, cpu.attentions, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=0)
        assert (a.triu(1) == 0).all()
