"""modernlm.inspect: activations by name agree with each other and with output_attentions / hidden_states; ablating a
head equals the forward pass recomputed by hand with that head's output zeroed (or set to its mean); patching from the
same prompt changes nothing, from another prompt carries its result; the logit lens at the last layer is the logits;
the measures on patterns built by hand; bad names are refused with the fix."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import modernlm
from modernlm.inspect import (
    HookNameError,
    ablate_heads,
    default_names,
    entropy,
    head_ablation,
    hooks,
    induction_scores,
    logit_lens,
    patch,
    pattern_distances,
    prev_token_scores,
    repeated_tokens,
    run_with_cache,
)
from modernlm.quant import quantize
from modernlm.seq2seq import Seq2Seq

TOL = dict(atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = modernlm.preset("llama-tiny", n_layers=3, n_heads=4, n_kv_heads=2, init_std=0.1)
    return modernlm.Transformer(cfg).eval()


def ids_of(model, seed=1, T=12):
    return torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))


def no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- the cache ----------------------------------------------------------------------------------------------------
def test_the_cache_reads_every_point_and_they_add_up(model):
    ids = ids_of(model)
    with torch.no_grad():
        logits, cache = run_with_cache(model, ids)
        ref = model(ids, output_attentions=True, output_hidden_states=True)
    assert no_hooks_left(model) and all(not block.attn.probs for block in model.blocks)
    assert set(cache) == set(default_names(model)) and len(cache) == 3 * 7
    assert cache["blocks.1.attn.z"].shape == (2, 12, 4, 16) and cache["blocks.1.attn.pattern"].shape == (2, 4, 12, 12)
    torch.testing.assert_close(logits, ref.logits, **TOL)
    for i in range(3):  # the residual stream: pre + attention = mid, mid + FFN = post = the next block's pre
        b = f"blocks.{i}"
        torch.testing.assert_close(cache[f"{b}.resid_pre"] + cache[f"{b}.attn.out"], cache[f"{b}.resid_mid"], **TOL)
        torch.testing.assert_close(cache[f"{b}.resid_mid"] + cache[f"{b}.mlp.out"], cache[f"{b}.resid_post"], **TOL)
        torch.testing.assert_close(cache[f"{b}.resid_pre"], ref.hidden_states[i], **TOL)
        torch.testing.assert_close(cache[f"{b}.attn.pattern"], ref.attentions[i], **TOL)
        o_proj = model.blocks[i].attn.o_proj
        torch.testing.assert_close(o_proj(cache[f"{b}.attn.z"].flatten(-2)), cache[f"{b}.attn.out"], **TOL)
    assert cache.stack("resid_post").shape == (3, 2, 12, 64) and cache.residual_stream().shape == (4, 2, 12, 64)
    _, some = run_with_cache(model, ids, names=lambda name: name.endswith("pattern"))
    assert sorted(some) == [f"blocks.{i}.attn.pattern" for i in range(3)]


def test_logit_lens_at_the_last_layer_is_the_logits(model):
    ids = ids_of(model)
    lens, logits = logit_lens(model, ids)
    assert lens.shape == (4, 2, 12, model.config.vocab_size)
    assert torch.equal(lens[-1], logits)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids), **TOL)


# ---- ablation, by hand --------------------------------------------------------------------------------------------
def by_hand(model, ids, layer, head, fill=None):
    """The forward pass written from the layers' math (RMSNorm, RoPE, grouped-query causal attention, SwiGLU), with
    head `head` of layer `layer` replaced by zeros (or `fill`, (Dh,)) before the output projection."""
    cfg = model.config
    B, T = ids.shape
    H, K, Dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    rms = lambda x, norm: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * norm.weight  # noqa: E731
    angles = torch.arange(T).float()[:, None] * model.inv_freq  # (T, Dh/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)  # (T, Dh)
    rotate = lambda x: x * cos + torch.cat([-x[..., Dh // 2 :], x[..., : Dh // 2]], -1) * sin  # noqa: E731
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = model.embed.weight[ids]  # (B, T, D)
    for i, block in enumerate(model.blocks):
        a = block.attn
        h = rms(x, block.attn_norm)
        q = rotate((h @ a.q_proj.weight.T).view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
        k = rotate((h @ a.k_proj.weight.T).view(B, T, K, Dh).transpose(1, 2)).repeat_interleave(H // K, 1)
        v = (h @ a.v_proj.weight.T).view(B, T, K, Dh).transpose(1, 2).repeat_interleave(H // K, 1)  # (B, H, T, Dh)
        scores = (q @ k.transpose(-1, -2) / Dh**0.5).masked_fill(~causal, float("-inf"))  # (B, H, T, T)
        y = scores.softmax(-1) @ v  # (B, H, T, Dh)
        if i == layer:
            y[:, head] = 0.0 if fill is None else fill
        x = x + y.transpose(1, 2).reshape(B, T, H * Dh) @ a.o_proj.weight.T
        h = rms(x, block.ffn_norm)
        f = block.ffn
        x = x + (F.silu(h @ f.gate_proj.weight.T) * (h @ f.up_proj.weight.T)) @ f.down_proj.weight.T
    return rms(x, model.norm) @ model.lm_head.weight.T  # (B, T, V)


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3), (2, 1)])
def test_ablating_a_head_equals_the_forward_recomputed_with_it_zeroed(model, layer, head):
    ids = ids_of(model)
    with torch.no_grad():
        torch.testing.assert_close(by_hand(model, ids, layer=-1, head=0), model(ids), **TOL)  # the reference itself
        with ablate_heads(model, [(layer, head)]):
            got = model(ids)
        want = by_hand(model, ids, layer, head)
        assert (got - model(ids)).abs().max() > 1e-4  # the head mattered
    torch.testing.assert_close(got, want, **TOL)
    assert no_hooks_left(model)


def test_mean_ablation_puts_the_reference_mean_in_the_head(model):
    ids, reference = ids_of(model), ids_of(model, seed=7, T=20)
    with torch.no_grad():
        _, ref = run_with_cache(model, reference, names=["blocks.1.attn.z"])
        with ablate_heads(model, [(1, 2)], mean=ref):
            got = model(ids)
    fill = ref["blocks.1.attn.z"][:, :, 2].mean((0, 1))  # (Dh,)
    with torch.no_grad():
        torch.testing.assert_close(got, by_hand(model, ids, 1, 2, fill[None, None]), **TOL)


def test_head_ablation_table_is_the_loss_change_of_each_ablation(model):
    ids = ids_of(model)
    base, deltas = head_ablation(model, ids, layers=[2])
    assert deltas.shape == (1, 4)
    with torch.no_grad():
        logits = by_hand(model, ids, 2, 3)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert abs(float(loss) - base - float(deltas[0, 3])) < 1e-5


# ---- patching -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["blocks.0.resid_post", "blocks.1.attn.z", "blocks.2.mlp.out", "blocks.1.resid_mid"])
def test_patching_from_the_same_prompt_changes_nothing(model, name):
    ids = ids_of(model)
    with torch.no_grad():
        clean, cache = run_with_cache(model, ids, names=[name])
        with patch(model, name, cache[name]):
            patched = model(ids)
        with patch(model, name, cache[name], positions=[3, 5]):
            some = model(ids)
    assert torch.equal(patched, clean) and torch.equal(some, clean)


def test_patching_from_another_prompt_carries_its_result(model):
    ids, other = ids_of(model), ids_of(model, seed=2)
    with torch.no_grad():
        theirs, cache = run_with_cache(model, other, names=["blocks.2.resid_post"])
        with patch(model, "blocks.2.resid_post", cache["blocks.2.resid_post"]):
            torch.testing.assert_close(model(ids), theirs, **TOL)  # the last stream decides the logits
        with patch(model, "blocks.0.resid_pre", cache["blocks.2.resid_post"], positions=[11]):
            only_last = model(ids)
        mine = model(ids)
    torch.testing.assert_close(only_last[:, :11], mine[:, :11], **TOL)  # causal: earlier positions untouched
    assert (only_last[:, 11] - mine[:, 11]).abs().max() > 1e-3


# ---- other members, quantized models, bad names -------------------------------------------------------------------
def test_t5_points_and_quantized_models():
    torch.manual_seed(0)
    cfg = modernlm.ModelConfig(family="seq2seq", positions="t5_relative", attn_scale=1.0, ffn="geglu", vocab_size=50,
                               d_model=32, n_layers=2, n_decoder_layers=2, n_heads=4, n_kv_heads=4,
                               max_seq_len=32)  # fmt: skip
    t5 = Seq2Seq(cfg).eval()
    src, tgt = torch.randint(0, 50, (1, 9)), torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        out, cache = run_with_cache(t5, src, tgt)
        ref = t5(src, tgt, output_attentions=True)
    torch.testing.assert_close(cache["decoder.1.cross_attn.pattern"], ref.cross_attentions[1], **TOL)
    assert cache["encoder.0.attn.z"].shape == (1, 9, 4, 8) and "decoder.0.cross_attn.z" in cache
    model = quantize(copy.deepcopy(modernlm.Transformer(modernlm.preset("llama-tiny")).eval()), "int8")
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad(), ablate_heads(model, [(0, 1)]):
        _, qcache = run_with_cache(model, ids, names=["blocks.0.attn.z"])
    assert (qcache["blocks.0.attn.z"][:, :, 1] == 0).all() and (qcache["blocks.0.attn.z"][:, :, 0] != 0).any()


def test_bad_names_and_heads_are_refused_with_the_fix(model):
    with pytest.raises(HookNameError, match="blocks.0 .. blocks.2"):
        run_with_cache(model, ids_of(model), names=["blocks.9.attn.out"])
    with pytest.raises(HookNameError, match="one of resid_pre"):
        run_with_cache(model, ids_of(model), names=["blocks.0.attn.wrong"])
    with pytest.raises(HookNameError, match="belongs to an attention module"):
        run_with_cache(model, ids_of(model), names=["blocks.0.mlp.z"])
    with pytest.raises(ValueError, match="heads 0..3"), ablate_heads(model, [(0, 4)]):
        pass
    with pytest.raises(ValueError, match="give positions="), patch(model, "blocks.0.resid_post", torch.zeros(1, 3, 64)):
        model(ids_of(model))
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="hook returned shape"), hooks(model, {"blocks.0.attn.z": lambda z: z[..., 0]}):
        model(ids_of(model))


# ---- measures -----------------------------------------------------------------------------------------------------
def test_measures_on_patterns_built_by_hand():
    T, n = 9, 4
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]  # (T, T) each row spread over its keys
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1  # every token on the one before it
    induct = torch.zeros(T, T)
    induct[torch.arange(T), torch.arange(T)] = 1
    q = torch.arange(1 + n, 1 + 2 * n)
    induct[q] = 0
    induct[q, q - n + 1] = 1  # the repeat on the token after its first occurrence
    pattern = torch.stack([uniform, prev, induct])[None]  # (1, 3, T, T)
    torch.testing.assert_close(entropy(uniform), torch.arange(1, T + 1).float().log(), **TOL)
    assert prev_token_scores((pattern,))[0, 1] == 1 and induction_scores((pattern,), n, offset=1)[0, 2] == 1
    assert induction_scores((pattern,), n, offset=1)[0, 1] == 0
    distances = pattern_distances(pattern)  # (3, 3)
    assert distances.shape == (3, 3) and (distances.diagonal() == 0).all() and distances[1, 2] > 0.4
    torch.testing.assert_close(distances, distances.T, **TOL)
    ids = repeated_tokens(100, n, batch=2, seed=0, prefix=99)
    assert ids.shape == (2, 1 + 2 * n) and (ids[:, 0] == 99).all() and torch.equal(ids[:, 1 : 1 + n], ids[:, 1 + n :])


# ---- modernlm inspect ---------------------------------------------------------------------------------------------
def test_cli_writes_the_data_pictures_and_page_of_a_tiny_model(tmp_path, capsys, tiny_chat_dir):
    import json

    from modernlm.cli.__main__ import main

    source = tiny_chat_dir("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "out"
    args = ["inspect", "--model", str(source), "--prompt", "the quick brown fox", "--out", str(out)]
    assert main([*args, "--layer", "1", "--head", "0", "--html"]) == 0
    printed = capsys.readouterr()
    assert "next token" in printed.err
    data = json.loads((out / "inspect.json").read_text())
    T, L, H = len(data["tokens"]), 2, 2
    assert data["model"] == str(source) and (data["layers"], data["heads"]) == (L, H) and T >= 2
    att = torch.tensor(data["attentions"])  # (L, H, T, T)
    assert att.shape == (L, H, T, T) and (att.triu(1) == 0).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(L, H, T), atol=1e-3, rtol=0)
    lens = data["logit_lens"]
    assert len(lens["top_tokens"]) == L + 1 and len(lens["top_tokens"][0]) == T and lens["agrees_with_final"][-1] == 1
    assert len(data["residual_norms"]) == L + 1 and torch.tensor(data["entropy"]).shape == (L, H)
    assert data["ablation"]["layers"] == [0, 1] and torch.tensor(data["ablation"]["loss_change"]).shape == (L, H)
    pictures = ["attention_grid", "logit_lens", "answer_by_layer", "residual_norms", "entropy", "ablation"]
    for name in [*pictures, "attention_L1_H0"]:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert str(out / f"{name}.png") in printed.out
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 7 and "src=\"http" not in page and "<script" not in page
    assert main([*args, "--layer", "1", "--ablate", "0"]) == 0
    assert (out / "attention_L1.png").is_file() and json.loads((out / "inspect.json").read_text())["ablation"] == {
        "layers": [], "base_loss": data["ablation"]["base_loss"], "loss_change": []}  # fmt: skip
    for bad, message in [(["--layer", "2", "--head", "0"], "layers 0..1"), (["--head", "1"], "--head needs --layer")]:
        assert main([*args, *bad]) == 2 and message in capsys.readouterr().err


def test_cli_on_smollm2(tmp_path, capsys):
    import json

    from modernlm.cli.__main__ import main

    out = tmp_path / "smol"
    assert main(["inspect", "--prompt", "The capital of France is", "--out", str(out), "--ablate", "2"]) == 0
    data = json.loads((out / "inspect.json").read_text())
    assert (data["layers"], data["heads"]) == (30, 9) and data["ablation"]["layers"] == [0, 29]
    assert data["logit_lens"]["answer"] == " Paris" and data["logit_lens"]["answer_prob_by_layer"][-1] > 0.3
    assert (out / "attention_grid.png").is_file() and (out / "logit_lens.png").is_file()
