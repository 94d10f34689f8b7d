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


def test_shared_qk_trained_setting_is_the_mean_over_seeds(ran):
    from statistics import fmean

    numbers = ran("shared-qk")[0].numbers
    trained = next(k for k in numbers["settings"] if k.startswith("trained"))
    for kind in ("shared", "separate"):
        runs = numbers["trained_per_seed"][kind]
        assert len(runs) == len(numbers["seeds"]) >= 2
        assert numbers["settings"][trained][kind]["diagonal_mass"] == pytest.approx(
            fmean(r["diagonal_mass"] for r in runs)
        )
    shared, separate = (numbers["trained_per_seed"][k] for k in ("shared", "separate"))
    ratios = [a["diagonal_mass"] / b["diagonal_mass"] for a, b in zip(shared, separate, strict=True)]
    assert numbers["diagonal_ratio"][trained] == pytest.approx(fmean(ratios))


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
    for per_seed in n["curves"].values():
        assert len(per_seed) == len(n["seeds"]) >= 2
        assert all(curve[0] == pytest.approx(LN256, abs=0.15) for curve in per_seed)


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
    leak, causal = n["runs"]["no mask"]["train_losses"], n["runs"]["causal"]["train_losses"]
    assert all(a < b for a, b in zip(leak, causal, strict=True))
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


# ---- issue 16: the non-training claims, each against a closed form or an independent computation ----------------
def test_gpt3_memory_from_the_published_shape(ran):
    n = ran("gpt3-memory")[0].numbers
    L, D, V, A = 96, 12288, 50257, 96
    # per block: 12·D² weights (4·D² attention, 8·D² MLP), biases 3D + D + 4D + D, two LayerNorms 4D; the embedding
    # (tied head), 2048 learned positions, the final LayerNorm
    assert n["parameters"] == L * (12 * D * D + 13 * D) + V * D + 2048 * D + 2 * D
    assert n["parameter_bytes"] == 2 * n["parameters"] == pytest.approx(350e9, rel=0.01)  # the card: ~350 GB
    for s, a in n["activations"].items():
        s = int(s)
        assert a["formula"] == L * (34 * s * D + 5 * A * s * s)  # Korthikanti et al., batch 1, 16 bits
        assert a["analysis"] == pytest.approx(a["formula"], rel=0.05)
    assert n["activations"]["1024"]["formula"] == pytest.approx(90e9, rel=0.01)  # the card: ~90 GB at 1K
    assert n["activations"]["8192"]["formula"] > 3e12  # and over 3 TB at 8K


def test_kv_cache_of_a_7b_model(ran):
    finding = ran("kv-cache-7b")[0]
    sizes = finding.numbers["sizes"]
    for label, s in sizes.items():
        T, element = int(label.split()[0]), 2 if "fp16" in label else 4
        for kind, heads in (("MHA", 32), ("GQA-8", 8), ("MQA", 1)):
            assert s[kind] == 2 * 32 * heads * 128 * T * element
    assert [sizes["8192 tokens, fp16"][k] for k in ("MHA", "GQA-8", "MQA")] == [4 * 2**30, 2**30, 2**27]
    assert finding.verdict == "depends"  # at Llama 2's own 4K fp16 context the card's figures are twice too high


def test_mqa_gqa_flops_against_the_counter_and_the_matrix_sizes(ran):
    n = ran("mqa-gqa-flops")[0].numbers
    assert all(v["counted"] == v["analysis"] for v in n["counted"].values())  # FlopCounterMode, exactly
    m, tokens = n["small_model"], 2 * n["small_tokens"]
    D, L, Dh = m["d_model"], m["n_layers"], m["d_model"] // m["n_heads"]
    for kv in (2, 1):  # fewer KV heads save only the K and V projections: 2 FLOPs x 2 matrices x D x (H - K)·Dh
        saved = n["counted"]["8"]["counted"] - n["counted"][str(kv)]["counted"]
        assert saved == 2 * 2 * tokens * D * (8 - kv) * Dh * L
    D, L, F, V = 4096, 32, 11008, 32000
    for T, f in n["per_token"].items():
        for kind, kv_dim in (("MHA", 4096), ("GQA-8", 1024), ("MQA", 128)):
            per_layer = 2 * (D * (D + 2 * kv_dim) + D * D + 3 * D * F) + 2 * 2 * int(T) * D
            assert f[kind] == L * per_layer + 2 * D * V


def test_random_vectors_follow_the_exact_cosine_distribution(ran):
    from scipy.special import betainc

    from modernlm.lab.orthogonality import cosine_tail

    n = ran("random-orthogonality")[0].numbers
    t = n["threshold"]
    for d, v in n["stats"].items():
        d = int(d)
        exact = betainc((d - 1) / 2, 0.5, 1 - t * t)  # P(|cos| > t): cos² ~ Beta(1/2, (d-1)/2)
        assert v["closed_form_tail"] == pytest.approx(exact, abs=1e-6)
        assert v["tail"] == pytest.approx(exact, abs=0.02)
        assert v["std"] == pytest.approx(1 / math.sqrt(d), rel=0.05) and abs(v["mean"]) < 0.01
    assert cosine_tail(768, 0.2) == pytest.approx(betainc(767 / 2, 0.5, 1 - 0.04), abs=1e-9)


def test_qk_init_variance_against_the_product_rule(ran):
    from modernlm.lab.qk_init import DH, LR, _settings

    r = ran("qk-init-variance")[0].numbers["results"]
    for name, (scale, vq, vk) in _settings().items():
        # Var(q·k) = Dh·σq²·σk² for independent zero-mean components; the scale multiplies the std
        std = math.sqrt(DH * vq * vk) * (scale if scale is not None else DH**-0.5)
        assert r[name]["score_std"] == pytest.approx(std, rel=0.05)
        # Adam's first step moves each weight by lr·sign(g), so W_Q (std sqrt(σq²/D)) moves by lr / its std
        assert r[name]["q_update"] == pytest.approx(LR / math.sqrt(vq / 768), rel=0.02)
        same = math.isclose(vq * vk, 1 / DH) and scale == 1.0 or scale is None
        assert (r[name]["output_difference"] < 1e-9) == same


def test_decoding_metrics_against_sacrebleu_and_transformers(ran, tmp_path):
    sacrebleu = pytest.importorskip("sacrebleu")
    from transformers import LlamaForCausalLM

    import modernlm
    from modernlm.lab.decoding import DETERMINISTIC, quick_model

    n = ran("decoding-diversity")[0].numbers
    modernlm.save_model(quick_model(), tmp_path / "tiny")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "tiny", dtype=torch.float64).eval()
    for name, per_prompt in n["generations"].items():
        s = n["stats"][name]
        k = 1 if name in DETERMINISTIC else n["samples_per_prompt"]
        texts = [g for samples in per_prompt for g in samples[:k]]
        bigrams = [len(set(zip(t, t[1:], strict=False))) / (len(t) - 1) for t in texts]
        assert s["distinct_2"] == pytest.approx(sum(bigrams) / len(bigrams))
        bleus = []
        for samples in per_prompt:
            words = [" ".join(map(str, g)) for g in samples]
            bleus += [sum(sacrebleu.sentence_bleu(w, words[:i] + words[i + 1 :]).score
                          for i, w in enumerate(words)) / len(words)]  # fmt: skip
        assert s["self_bleu"] == pytest.approx(sum(bleus) / len(bleus))
        nll = tokens = 0
        with torch.no_grad():
            for prompt, samples in zip(n["prompts"], per_prompt, strict=True):
                for g in samples[:k]:
                    logits = hf(torch.tensor([prompt + g])).logits[0, len(prompt) - 1 : -1]
                    nll -= float(logits.log_softmax(-1).gather(-1, torch.tensor(g)[:, None]).sum())
                    tokens += len(g)
        assert s["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert n["stats"]["greedy"]["self_bleu"] == pytest.approx(100.0)  # one deterministic text, k times


def test_kv_cache_generations_match_and_count_tokens(ran):
    g = ran("kv-cache")[0].numbers["generation"]
    assert all(g["same_tokens"])  # the cached generation equals the recomputing reference
    for N, cached, naive in zip(g["new_tokens"], g["cached_tokens"], g["recompute_tokens"], strict=True):
        assert cached == 16 + N - 1 and naive == sum(16 + i for i in range(N))


def test_rope_scalings_obey_what_the_scalings_are(ran):
    from modernlm.lab.long_context import FINETUNED, SCALINGS

    finding = ran("rope-scalings")[0]
    past = finding.numbers["past"]
    assert set(past) == {*SCALINGS, *(f"{k} + fine-tune" for k in FINETUNED), "sinusoidal", "learned", "alibi",
                         "rope 100k"}  # fmt: skip
    # dynamic NTK is the plain model up to the training length: equal at 1x, to the bit
    assert past["dynamic"][0] == past["none"][0]
    assert all(1 < p < 256 for v in past.values() for p in v)  # better than a uniform guess over bytes
    assert set(finding.numbers["positions"].values()) <= {"confirmed", "refuted", "depends"}
    assert "RoPE extrapolates worse than ALiBi" in finding.summary
    per_seed = finding.numbers["past_per_seed"]  # each seed trains its own models: different perplexities
    assert len(per_seed) == len(finding.numbers["seeds"]) >= 2 and per_seed[0]["none"] != per_seed[1]["none"]
    for label, v in past.items():
        assert v == pytest.approx([sum(p[label][i] for p in per_seed) / len(per_seed) for i in range(len(v))])


def test_position_verdicts_need_a_margin_and_the_seed_rule():
    from modernlm.lab.long_context import _position_verdicts

    def growth(rope, sinusoidal, alibi):  # each: [2x, 4x, 8x] of each seed
        return {"none": rope, "rope 100k": rope, "sinusoidal": sinusoidal, "alibi": alibi}

    def two(v, jitter=0.01):  # two seeds close to v: the paired differences barely vary
        return [v, [x + jitter for x in v]]

    clear = _position_verdicts(growth(two([1.2, 1.5, 2.0]), two([2.0, 4.0, 9.0], 0.02), two([1.0, 1.0, 1.0])))
    assert set(clear.values()) == {"confirmed"}
    tied = _position_verdicts(growth(two([1.0, 1.0, 1.0]), two([1.01, 0.99, 1.0], 0.02), two([1.0, 1.01, 0.99])))
    assert set(tied.values()) == {"refuted"}  # no difference: not "more stable", not "worse"
    opposite = _position_verdicts(growth(two([3.0, 5.0, 9.0]), two([1.0, 1.0, 1.0]), two([4.0, 6.0, 12.0])))
    assert set(opposite.values()) == {"refuted"}
    # RoPE's mean is far below sinusoidal's, but one seed says the opposite: within noise, so no claim holds
    noisy = _position_verdicts(growth([[1.2, 1.5, 2.0], [3.0, 5.0, 9.0]], [[2.0, 4.0, 9.0], [2.5, 4.6, 5.0]],
                                      [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))  # fmt: skip
    assert noisy["RoPE extrapolates more stably than sinusoidal"] == "refuted"


def test_alignment_kl_experiments_report_reward_and_kl_per_coefficient_and_seed(ran):
    from statistics import fmean, stdev

    finding, _ = ran("kl-tradeoff")
    n_seeds = len(finding.numbers["seeds"])
    runs = {k: v for k, v in finding.numbers.items() if k.replace(".", "").isdigit()}
    assert set(runs) == {"0.0", "1.0"} and n_seeds >= 2
    for r in runs.values():
        assert len(r["kl_per_seed"]) == len(r["reward_per_seed"]) == n_seeds
        assert all(k >= 0 for k in r["kl_per_seed"]) and all(0 <= x <= 1 for x in r["reward_per_seed"])  # exact KL
        assert r["kl"] == pytest.approx(fmean(r["kl_per_seed"]))
        assert r["kl_std"] == pytest.approx(stdev(r["kl_per_seed"]))
        assert r["reward"] == pytest.approx(fmean(r["reward_per_seed"]))
    assert "Verdict rule" in finding.summary
    finding, _ = ran("ppo-needs-a-reference")
    n = finding.numbers
    assert n["0.0"]["kl"] >= 0 and "1.0" in n and 0 <= n["rm_accuracy"] <= 1
    assert len(n["rm_accuracy_per_seed"]) == len(n["0.0"]["kl_per_seed"]) == len(n["seeds"]) >= 2
    drift = [a - 2 * b for a, b in zip(n["0.0"]["kl_per_seed"], n["1.0"]["kl_per_seed"], strict=True)]
    assert n["free_kl_minus_twice_held"]["mean"] == pytest.approx(fmean(drift))
