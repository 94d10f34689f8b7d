"""The lab's round-two training experiments: each quick run (two seeds) gives a verdict under the stated rule, and its
numbers are checked against closed forms or an independent computation made here."""

from __future__ import annotations

import math

import pytest
import torch

from modernlm.lab._seeds import difference
from modernlm.lab._train import tiny_config

LN256 = math.log(256)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _verdict_follows_the_rule(numbers: dict, a: str, b: str, key: str) -> None:
    """The stored difference is the paired difference of the stored per-seed losses, and the rule is printed."""
    runs = numbers["runs"]
    d = difference(runs[a]["val_losses"], runs[b]["val_losses"])
    assert numbers[key] == pytest.approx(d.to_dict())
    assert len(runs[a]["val_losses"]) == len(numbers["seeds"]) >= 2
    assert "twice their standard deviation" in numbers["rule"]


def test_relu_vs_gelu_means_and_dead_units(ran):
    finding, out = ran("relu-vs-gelu")
    n = finding.numbers
    # E[ReLU(z)] = 1/sqrt(2 pi); E[GELU(z)] = E[z Phi(z)] = E[phi(z)] = 1/(2 sqrt(pi)); E[SiLU(z)] by quadrature
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    phi = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    silu = torch.trapezoid(z * torch.sigmoid(z) * phi, z).item()
    expected = {"ReLU": 1 / math.sqrt(2 * math.pi), "GELU": 1 / (2 * math.sqrt(math.pi)), "SiLU": silu}
    for k, v in expected.items():
        assert n["normal_means"][k] == pytest.approx(v, abs=0.01), k
    _verdict_follows_the_rule(n, "ReLU", "GELU", "relu_minus_gelu")
    assert n["runs"]["GELU"]["zero_outputs"] == 0 and n["runs"]["SiLU"]["zero_outputs"] == 0
    assert all(r["losses"][0] == pytest.approx(LN256, abs=0.15) for r in n["runs"].values())
    assert "twice their standard deviation" in (out / "verdict.md").read_text()


def test_unit_stats_on_hand_built_weights():
    from modernlm.lab.activations import unit_stats
    from modernlm.model import Transformer

    # one layer, 8 hidden units, up-projection weights 0 and biases -1 (units 0-2) or +1: exactly 3/8 are dead,
    # the ReLU outputs are 0 there and 1 elsewhere
    model = Transformer(tiny_config(d_model=64, n_layers=1, ffn="relu", ffn_hidden=8, mlp_bias=True))
    up = model.blocks[0].ffn.up_proj
    with torch.no_grad():
        up.weight.zero_()
        up.bias.copy_(torch.tensor([-1.0] * 3 + [1.0] * 5))
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    stats = unit_stats(model, ids)
    assert stats == pytest.approx(dict(dead_fraction=3 / 8, zero_outputs=3 / 8, mean_output=5 / 8))


def test_heads_parameters_and_kv_bytes(ran):
    n = ran("mha-gqa-mqa")[0].numbers
    from modernlm.lab.heads import configs

    cfgs = configs(n["d_model"], n["layers"], n["heads"])
    L, D, T = n["layers"], n["d_model"], n["cache_tokens"]
    mha = n["runs"][f"MHA ({n['heads']} heads)"]
    for label, r in n["runs"].items():
        cfg = cfgs[label]
        assert r["parameters"] == r["formula_parameters"]
        # K and V, per layer: kv heads x head dim values per token, 2 bytes each in fp16
        assert r["kv_bytes"] == 2 * L * r["kv_heads"] * r["head_dim"] * T * 2
        # equal parameters: the dropped K, V weights, 2·D·(H-K)·Dh per layer, went to the FFN (3·D per unit), to
        # within half a hidden unit per layer
        assert abs(r["parameters"] - mha["parameters"]) <= L * 3 * D / 2, label
        assert cfg.n_heads * cfg.head_dim == D
    assert n["runs"]["single head"]["parameters"] == mha["parameters"]
    assert mha["kv_bytes"] == n["heads"] * n["runs"][f"MQA ({n['heads']} heads, 1 KV)"]["kv_bytes"]
    _verdict_follows_the_rule(n, "single head", f"MHA ({n['heads']} heads)", "single_minus_mha")


def test_dropout_overfitting_gaps_and_rule(ran):
    n = ran("dropout-overfitting")[0].numbers
    for r in n["runs"].values():
        assert r["gaps"] == pytest.approx([v - t for t, v in zip(r["train_losses"], r["val_losses"], strict=True)])
        assert r["losses"][0] == pytest.approx(LN256, abs=0.15)
    d = difference(n["runs"]["no dropout"]["val_losses"], n["runs"]["dropout 0.2"]["val_losses"])
    assert n["val_gain"]["dropout 0.2"] == pytest.approx(d.to_dict())
    assert n["corpus_bytes"] == 8_000


def test_adam_l2_and_adamw_steps_match_the_update_rules_in_float64():
    """One step of each optimizer the lab builds, against Adam's update written out here (Kingma & Ba; Loshchilov &
    Hutter): L2 adds wd·w to the gradient before the moments; AdamW shrinks w by lr·wd outside them."""
    from modernlm.lab._train import make_optimizer

    lr, wd, eps = 0.01, 0.5, 1e-8  # betas (0.9, 0.95) cancel in the first bias-corrected step
    g0 = torch.Generator().manual_seed(0)
    w0, grad = (
        torch.randn(3, 4, generator=g0, dtype=torch.float64),
        torch.randn(3, 4, generator=g0, dtype=torch.float64),
    )

    def step(kind):
        model = torch.nn.Linear(4, 3, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(w0)
        model.weight.grad = grad.clone()
        opt = make_optimizer(model, lr, wd, kind)
        opt.step()
        return model.weight.detach()

    def adam(g):  # first step: m = (1-b1) g, v = (1-b2) g², bias-corrected: m/(1-b1) = g, v/(1-b2) = g²
        return lr * g / (g.abs() + eps)

    assert torch.allclose(step("adam_l2"), w0 - adam(grad + wd * w0), atol=1e-12)
    assert torch.allclose(step("adamw"), w0 * (1 - lr * wd) - adam(grad), atol=1e-12)
    with pytest.raises(ValueError, match="optimizer"):
        from modernlm.lab._train import train

        train(tiny_config(), 1, optimizer="sgd")


def test_adamw_vs_l2_rule(ran):
    n = ran("adamw-vs-l2")[0].numbers
    assert set(n["runs"]) == set(n["settings"])
    # same init and batches for every setting (one config): without decay AdamW and Adam + L2 0 are one run, and the
    # first training loss is the same for all
    firsts = [r["losses"][0] for r in n["runs"].values()]
    assert max(firsts) - min(firsts) < 1e-6 and firsts[0] == pytest.approx(LN256, abs=0.15)


def test_clip_warmup_outcomes():
    from modernlm.lab.stability import outcome

    assert outcome([5.5] * 5 + [2.0] * 10) == dict(final=2.0, failed=0.0, spike=0.0)
    stalled = outcome([5.5, 9.0] + [5.2] * 10)
    assert stalled["failed"] == 1.0 and stalled["spike"] == pytest.approx(3.5)
    diverged = outcome([5.5, 7.0, math.nan])
    assert diverged["failed"] == 1.0 and diverged["spike"] == math.inf and math.isnan(diverged["final"])


def test_clip_warmup_counts(ran):
    n = ran("clip-warmup-high-lr")[0].numbers
    for g, per_lr in n["runs"].items():
        assert n["failed"][g] == sum(o["failed"] for per in per_lr.values() for o in per)
        assert all(len(per) == len(n["seeds"]) for per in per_lr.values())


def test_depth_vs_width_keeps_the_parameters(ran):
    n = ran("depth-vs-width")[0].numbers
    shapes = n["shapes"]
    for (L, D), (label, r) in zip(shapes, n["runs"].items(), strict=True):
        # per layer: q, k, v, o (4·D²) + gate, up, down at F = 8D/3 (8·D²) + two RMSNorm gains; final norm D
        assert r["non_embedding"] == L * (12 * D * D + 2 * D) + D, label
        assert r["parameters"] == r["formula_parameters"] == r["non_embedding"] + 2 * 256 * D
    weights = {L * D * D for L, D in shapes}
    assert len(weights) == 1  # L·D² fixed: the same 12·L·D² weight parameters


def test_lora_counts_flops_and_memory(ran):
    n = ran("lora-vs-full")[0].numbers
    from modernlm.analysis import parameter_counts
    from modernlm.lab.lora import B, T, settings

    cfg = tiny_config(d_model=n["d_model"], n_layers=n["layers"], ffn_multiple_of=8)
    full = n["runs"]["full"]
    assert full["trainable"] == parameter_counts(cfg)["total"]
    # every matmul's backward is two matmuls of its size (input and weight gradients): a full step is 3 forwards
    assert full["step"] == 3 * full["forward"]
    shapes = {
        "q_proj": (cfg.d_model, cfg.q_dim),
        "k_proj": (cfg.d_model, cfg.kv_dim),
        "v_proj": (cfg.d_model, cfg.kv_dim),
    }
    shapes.update(o_proj=(cfg.q_dim, cfg.d_model), gate_proj=(cfg.d_model, cfg.ffn_hidden))
    shapes.update(up_proj=(cfg.d_model, cfg.ffn_hidden), down_proj=(cfg.ffn_hidden, cfg.d_model))
    for label, setting in settings(quick=True).items():
        r = n["runs"][label]
        assert r["optimizer_bytes"] == 8 * r["trainable"]  # AdamW: two float32 moments per trainable parameter
        if setting is None:
            continue
        adapters = cfg.n_layers * sum(setting.r * sum(shapes[t]) for t in setting.targets)  # A (r, in), B (out, r)
        assert r["adapter_formula"] == adapters
        extra = (2 * cfg.n_layers + 1) * cfg.d_model + 256 * cfg.d_model if setting.train_norms else 0
        assert r["trainable"] == adapters + extra  # norm gains (2 a block + final) and the embedding
        # the adapters' forward: x A^T then (.) B^T, 2·tokens·r·(in + out) FLOPs per adapted projection
        assert r["forward"] - full["forward"] == 2 * B * T * adapters
        assert r["step"] < full["step"] and r["memory_bytes"] < full["memory_bytes"]


def test_block_effects_ablate_one_block_each(ran):
    n = ran("block-effects-vs-size")[0].numbers
    from modernlm.analysis import parameter_counts
    from modernlm.lab.block_effects import configs

    for (d, layers), (key, runs) in zip(n["sizes"], n["runs"].items(), strict=True):
        cfgs = configs(d, layers)
        modern = cfgs["modern"]
        assert (modern.norm, modern.ffn, modern.positions, modern.n_kv_heads) == ("rmsnorm", "swiglu", "rope", 2)
        for label, cfg in cfgs.items():
            changed = {f for f in ("norm", "ffn", "positions", "n_kv_heads") if getattr(cfg, f) != getattr(modern, f)}
            assert len(changed) == (0 if label == "modern" else 1), label
            assert runs[label]["parameters"] == parameter_counts(cfg)["total"]
        # LayerNorm adds a bias per norm (2 a block + the final one); MHA adds K, V for 2 more heads
        assert runs["LayerNorm for RMSNorm"]["parameters"] - runs["modern"]["parameters"] == (2 * layers + 1) * d
        assert runs["MHA for GQA"]["parameters"] - runs["modern"]["parameters"] == layers * 2 * d * (d // 2)
        for label, e in n["effects"][key].items():
            assert e == pytest.approx(difference(runs[label]["val_losses"], runs["modern"]["val_losses"]).to_dict())


def test_postnorm_depth_counts(ran):
    n = ran("postnorm-depth")[0].numbers
    assert set(n["runs"]) == {f"{p}-norm, {w}" for p in ("pre", "post") for w in ("warmup", "no warmup")}
    for label, per_depth in n["runs"].items():
        assert list(per_depth) == [str(d) for d in n["depths"]]
        for depth, outcomes in per_depth.items():
            assert len(outcomes) == len(n["seeds"])
            assert n["failed"][label][depth] == sum(o["failed"] for o in outcomes)
            assert all(o["spike"] >= 0 for o in outcomes)  # measured from the first loss, itself included


def test_batchnorm_layer_normalises_over_every_token_in_float64():
    from modernlm.layers.norm import BatchNorm

    x = torch.randn(3, 5, 8, dtype=torch.float64)
    bn = BatchNorm(8).double().train()
    rows = x.reshape(-1, 8)  # every token of the batch, padding included
    expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(bn(x), expected.view(3, 5, 8), atol=1e-12)
    # running statistics: (1 - momentum) * old + momentum * batch (unbiased variance), from 0 and 1
    assert torch.allclose(bn.running_mean, 0.1 * rows.mean(0)) and torch.allclose(
        bn.running_var, 0.9 + 0.1 * rows.var(0)
    )


def test_padded_batches_mask_padding_from_the_loss():
    from modernlm.lab.batchnorm import PAD, T, padded_batch

    data = torch.arange(1, 201)  # no zero: PAD never occurs in the data
    ids, mask, targets = padded_batch(data, 6, torch.Generator().manual_seed(0))
    assert ids.shape == (6, T + 1) and mask.shape == targets.shape == (6, T)
    for row, m, t in zip(ids, mask, targets, strict=True):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any() and n >= 8
        assert (row[1 : n + 1] - row[:n] == 1).all() and (row[n + 1 :] == PAD).all()  # a contiguous window, then PAD
        assert (t[:n] == row[1 : n + 1]).all() and (t[n:] == -100).all()


def test_layernorm_vs_batchnorm_numbers(ran):
    n = ran("layernorm-vs-batchnorm")[0].numbers
    assert max(n["runs"]["LayerNorm"]["logit_move"]) < 1e-5  # a LayerNorm model's row ignores its companions
    assert all(g == pytest.approx(0, abs=1e-5) for g in n["runs"]["LayerNorm"]["gaps"])  # no train/eval difference
    assert min(n["runs"]["BatchNorm, momentum 0.1"]["logit_move"]) > 1e-3
    ln, bn = n["runs"]["LayerNorm"], n["runs"]["BatchNorm, momentum 0.1"]
    assert n["bn_minus_ln"] == pytest.approx(difference(bn["eval_loss"], ln["eval_loss"]).to_dict())


def test_concatenated_positions_keep_tokens_and_positions_apart():
    from modernlm.model import Transformer

    cfg = tiny_config(d_model=32, positions="learned_concat", max_seq_len=16)
    model = Transformer(cfg)
    ids = torch.randint(0, 256, (2, 10))
    x = model._embed(ids, torch.arange(10), None)  # (B, T, D)
    assert torch.equal(x[..., :24], model.embed.weight[ids][..., :24])  # tokens: the first 3D/4
    assert torch.equal(x[..., 24:], model.pos_embed.weight[:10].expand(2, 10, 8))  # positions: the last D/4
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_config(d_model=34, n_heads=2, positions="learned_concat")


def test_add_vs_concat_numbers(ran):
    n = ran("add-vs-concat-positions")[0].numbers
    D = n["d_model"]
    runs = n["runs"]
    assert runs["added (learned)"]["position_parameters"] == 64 * D
    assert runs["concatenated (learned, D/4)"]["position_parameters"] == 64 * D // 4
    assert runs["RoPE (reference)"]["position_parameters"] == 0
    assert all(r["parameters"] == r["formula_parameters"] for r in runs.values())
    assert n["random_cosine"] == pytest.approx(math.sqrt(2 / (math.pi * D)))
    assert 0 < n["overlap"]["token_position"] < 1
    a, c = runs["added (learned)"], runs["concatenated (learned, D/4)"]
    assert n["added_minus_concat"] == pytest.approx(difference(a["val_losses"], c["val_losses"]).to_dict())


ROUND_TWO = [
    *("relu-vs-gelu", "mha-gqa-mqa", "dropout-overfitting", "adamw-vs-l2", "clip-warmup-high-lr", "depth-vs-width"),
    *("lora-vs-full", "block-effects-vs-size", "postnorm-depth", "layernorm-vs-batchnorm", "add-vs-concat-positions"),
    *("bias-and-tying", "swiglu-vs-gelu", "gpt2017-vs-llama", "prenorm-vs-postnorm", "causal-mask-leak"),
    "length-extrapolation",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ROUND_TWO)
def test_full_run_code_paths_with_training_capped_at_two_steps(name, monkeypatch):
    """The full (non-quick) configurations build, train, measure and plot: every training loop capped at 2 steps, so
    a full run on the idle machine cannot fail on a shape or a config the quick runs never reach."""
    import functools
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modernlm import lab
    from modernlm.lab import _train

    train = _train.train

    def capped(cfg, steps, *args, **kwargs):
        return train(cfg, min(steps, 2), *args, **kwargs)

    monkeypatch.setattr(_train, "train", capped)  # compare_seeds trains through it
    for module in lab.MODULES:
        m = importlib.import_module(f"modernlm.lab.{module}")
        if hasattr(m, "train"):
            monkeypatch.setattr(m, "train", capped)
        for loop in ("finetune", "train_padded"):  # (model or config, steps, ...)
            if hasattr(m, loop):
                f = getattr(m, loop)
                monkeypatch.setattr(
                    m, loop, functools.partial(lambda f, x, steps, *a, **k: f(x, min(steps, 2), *a, **k), f)
                )
    finding = lab.get(name).fn(False)
    assert finding.verdict in lab.VERDICTS and "seeds" in finding.summary
    fig = plt.figure()
    finding.plot(fig)
    plt.close(fig)
