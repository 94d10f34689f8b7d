"""The lab: every registered experiment's quick run gives a valid verdict and writes its three files; each one's
measured numbers are checked against a formula computed here, independently of the experiment."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modernlm import lab
from modernlm.analysis import parameter_counts
from modernlm.cli.__main__ import main
from modernlm.layers.norm import RMSNorm

NAMES = sorted(lab.experiments())
LN256 = math.log(256)  # the loss of a uniform guess over bytes: where every training curve starts


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Quick runs are tiny: one thread is faster than two on a shared CPU (and leaves the other core free)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """ran(name) -> (Finding, output directory); each experiment runs once per test session."""
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            done[name] = lab.run(name, quick=True, out=tmp_path_factory.mktemp(name))
        return done[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_its_three_files(name, ran):
    finding, out = ran(name)
    assert finding.verdict in lab.VERDICTS
    assert {p.name for p in out.iterdir()} >= {"result.json", "plot.png", "verdict.md"}
    record = json.loads((out / "result.json").read_text())
    assert record["verdict"] == finding.verdict and record["quick"] is True
    assert (out / "verdict.md").read_text().startswith(f"# {name}: {finding.verdict}")
    assert any(ch.isdigit() for ch in finding.summary)  # the summary carries the measured numbers
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_scale_follows_the_variance_of_a_dot_product(ran):
    n = ran("attention-scale")[0].numbers
    for d, s, u in zip(n["dims"], n["scaled"], n["unscaled"], strict=True):
        assert u["score_std"] == pytest.approx(math.sqrt(d), rel=0.1)  # Var(q·k) = d for q, k ~ N(0, I_d)
        assert s["score_std"] == pytest.approx(1.0, rel=0.1)
        assert u["entropy"] < s["entropy"] <= math.log(n["keys"])


def test_norm_speed_numbers_and_the_norm_it_times(ran):
    finding = ran("norm-speed")[0]
    rows = finding.numbers["settings"]
    for r in rows.values():
        assert r["speedup"] == pytest.approx(r["layernorm_ms"] / r["rmsnorm_ms"] - 1)
    from modernlm.lab.norm_speed import _verdict

    assert finding.verdict == _verdict([r["speedup"] for r in rows.values()])[0]
    x = torch.randn(4, 512)
    assert torch.allclose(RMSNorm(512)(x), x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt(), atol=1e-6)


def test_alibi_prefix_reuse_matches_a_full_recompute(ran):
    finding = ran("alibi-prefix-reuse")[0]
    for label, diff in finding.numbers["relative_difference"].items():
        assert max(diff.values()) < (1e-5 if "float32" in label else 1e-12), label
    assert finding.verdict == "refuted"


def test_shared_qk_symmetry_and_the_uniform_baseline(ran):
    n = ran("shared-qk")[0].numbers["settings"]
    T = 64
    for r in n.values():
        assert r["shared"]["asymmetry"] < 1e-6 < r["separate"]["asymmetry"]
        # uniform causal attention gives row t (1-based) a weight 1/t on itself: mean over rows 2..T
        assert r["shared"]["uniform_causal"] == pytest.approx(sum(1 / t for t in range(2, T + 1)) / (T - 1))
    unit = n["init std 1/sqrt(D)"]
    assert unit["shared"]["diagonal_mass"] > 2 * unit["separate"]["diagonal_mass"]


def test_causal_rank_of_triangular_and_full_softmax(ran):
    n = ran("causal-rank")[0].numbers
    small = n["cases"]["random, scale 0.1"]
    assert small["causal_rank"] == n["tokens"]  # det = product of a positive diagonal
    assert small["bidirectional_rank"] < n["tokens"]
    assert small["bidirectional_effective_rank"] < small["causal_effective_rank"]
    # the log of a product of weights in (0, 1] (the first row's weight is exactly 1)
    assert all(c["causal_log_det"] <= 0 for c in n["cases"].values())


def test_prenorm_vs_postnorm_shapes_and_starting_loss(ran):
    n = ran("prenorm-vs-postnorm")[0].numbers
    for per_depth in n["layer_gradients"].values():
        for depth, grads in per_depth.items():
            assert len(grads) == int(depth) and all(math.isfinite(g) and g > 0 for g in grads)
    for curve in n["curves"].values():
        assert curve[0] == pytest.approx(LN256, abs=0.15)


def test_flops_and_memory_formulas_are_exact(ran):
    n = ran("flops-memory-formulas")[0].numbers
    for T, v in n["attention"].items():
        D = 128
        assert v["counted"] == v["formula"] == 8 * int(T) * D * D + 4 * int(T) ** 2 * D
    assert all(v["counted"] == v["formula"] for v in n["models"].values())
    assert all(b == 16.0 for b in n["bytes_per_parameter"].values())  # 4 (w) + 4 (grad) + 8 (AdamW m, v)
    assert all(abs(e) < 0.02 for parts in n["memory_relative_error"].values() for e in parts.values())


def test_swiglu_parameters_follow_the_matrix_count(ran):
    n = ran("swiglu-vs-gelu")[0].numbers
    D, L = n["d_model"], n["layers"]
    for label, r in n["runs"].items():
        mats = 3 if label.startswith("SwiGLU") else 2
        assert r["ffn_parameters"] == L * mats * D * r["ffn_hidden"]
        assert r["losses"][0] == pytest.approx(LN256, abs=0.15)
    assert n["runs"]["SwiGLU 8/3"]["ffn_hidden"] == 8 * math.ceil(int(8 * D / 3) / 8)


def test_bias_and_tying_parameter_counts(ran):
    n = ran("bias-and-tying")[0].numbers
    D, L = n["d_model"], n["layers"]
    runs = n["runs"]
    ref = runs["no bias, untied"]
    from modernlm.lab._train import tiny_config

    cfg = tiny_config(d_model=D, n_layers=L, ffn_multiple_of=8)
    biases = L * (cfg.q_dim + 2 * cfg.kv_dim + D + 2 * cfg.ffn_hidden + D)  # q, k, v; out; gate, up; down
    assert runs["biases, untied"]["parameters"] - ref["parameters"] == biases
    assert ref["parameters"] - runs["no bias, tied"]["parameters"] == 256 * D  # the LM head, V x D
    assert all(r["parameters"] == r["formula_parameters"] for r in runs.values())
    assert parameter_counts(cfg)["total"] == ref["parameters"]


def test_causal_mask_leak_lowers_the_training_loss(ran):
    n = ran("causal-mask-leak")[0].numbers
    assert n["runs"]["no mask"]["train_loss"] < n["runs"]["causal"]["train_loss"]
    assert all(c[0] == pytest.approx(LN256, abs=0.15) for c in n["curves"].values())
    from modernlm import Transformer
    from modernlm.lab._train import tiny_config

    # the leaky model's mask (ModelConfig(causal=False)) shows every key to every query
    mask = Transformer(tiny_config(causal=False))._mask(torch.arange(5), False, None, 5)
    assert mask.all() and mask.shape == (1, 1, 5, 5)


def test_length_extrapolation_scalings_leave_the_training_length_alone(ran):
    ppl = ran("length-extrapolation")[0].numbers["perplexity"]
    # at 1x the scale factor is 1: position interpolation and NTK change nothing
    assert ppl["rope 10k + pi at eval"][0] == ppl["rope 10k"][0] == ppl["rope 10k + ntk at eval"][0]
    assert all(1 < p < 256 for v in ppl.values() for p in v)  # better than a uniform guess over bytes


def test_blocks_at_equal_compute(ran):
    n = ran("gpt2017-vs-llama")[0].numbers
    from modernlm.lab.blocks import SEQ, _configs

    for label, cfg in _configs(n["d_model"], n["layers"]).items():
        D, F, L = cfg.d_model, cfg.ffn_hidden, cfg.n_layers
        mats = 3 if cfg.ffn == "swiglu" else 2
        weights = L * (D * (2 * cfg.q_dim + 2 * cfg.kv_dim) + mats * D * F) + D * cfg.vocab_size  # matmul weights
        # 6 FLOPs per weight per token (forward 2, backward 4), plus Q K^T and weights x V: 3 x 2 x 2 x T x H·Dh x L
        assert n["flops_per_token"][label] == 6 * weights + 12 * SEQ * cfg.q_dim * L
        steps = n["runs"][label]["steps"]
        assert (
            abs(steps * 16 * SEQ * n["flops_per_token"][label] - n["budget"]) <= 16 * SEQ * n["flops_per_token"][label]
        )


def test_cli_lists_and_runs(capsys, tmp_path):
    assert main(["lab", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in NAMES)
    assert main(["lab", "run", "rope", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rope: ") and str(tmp_path / "verdict.md") in out
    assert main(["lab", "run", "no-such-experiment"]) == 2


def test_alignment_kl_experiments_report_reward_and_kl_per_coefficient(ran):
    finding, _ = ran("kl-tradeoff")
    runs = {k: v for k, v in finding.numbers.items() if k != "steps"}
    assert set(runs) == {"0.0", "1.0"}
    assert all(r["kl"] >= 0 and 0 <= r["reward"] <= 1 for r in runs.values())  # exact KL; the checker's reward
    finding, _ = ran("ppo-needs-a-reference")
    assert finding.numbers["0.0"]["kl"] >= 0 and "1.0" in finding.numbers and 0 <= finding.numbers["rm_accuracy"] <= 1
