"""The lab's round-two training experiments: each quick run (two seeds) gives a verdict under the stated rule, and its
numbers are checked against closed forms or an independent computation made here."""

from __future__ import annotations

import math

import pytest
import torch

from modernlm import lab
from modernlm.lab._seeds import difference
from modernlm.lab._train import tiny_config

LN256 = math.log(256)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            done[name] = lab.run(name, quick=True, out=tmp_path_factory.mktemp(name))
        return done[name]

    return get


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
