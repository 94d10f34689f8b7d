"""Long context: every RoPE scaling against transformers' own functions and models, sliding windows past the window
(uncached, cached, rolling cache), and length-dependent scalings across the original length."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import modernlm
from modernlm.config import ROPE_SCALINGS, ConfigError, ModelConfig
from modernlm.layers.kv_cache import KVCache, RollingKVCache
from modernlm.layers.rope import inverse_frequencies
from modernlm.layers.rope_scaling import ROPE_SCALINGS as SCALING_FUNCTIONS


def test_registry_lists_the_config_kinds():
    assert tuple(SCALING_FUNCTIONS) == ROPE_SCALINGS


# ---- frequencies and attention factors against transformers.modeling_rope_utils ------------------------------------
def hf_config(head_dim: int, rope: dict, max_pos: int = 4096, theta: float = 10000.0):
    heads = 4
    return transformers.LlamaConfig(
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters={**rope, "rope_theta": theta},
    )


def ours(head_dim: int, rope: dict, max_pos: int = 4096, theta: float = 10000.0, length=None):
    cfg = ModelConfig(
        d_model=4 * head_dim, n_heads=4, head_dim=head_dim, max_seq_len=max_pos, rope_theta=theta, rope_scaling=rope
    )
    length = None if length is None else torch.tensor(length)
    return inverse_frequencies(head_dim, theta, cfg.rope_scaling, length)


def longrope_factors(head_dim: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    short = (1 + torch.rand(head_dim // 2, generator=g)).tolist()
    return dict(short_factor=short, long_factor=[s * 3 for s in short])


HEAD_DIMS = (16, 64, 128)
FACTORS = (2.0, 4.0, 8.0)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize(
    "kind, extra",
    [
        ("linear", {}),
        ("yarn", dict(original_max_position_embeddings=1024)),
        ("yarn", dict(original_max_position_embeddings=512, beta_fast=16.0, beta_slow=2.0, truncate=False)),
        ("yarn", dict(original_max_position_embeddings=1024, mscale=0.707, mscale_all_dim=1.0)),
        ("yarn", dict(original_max_position_embeddings=1024, attention_factor=1.3)),
        ("llama3", dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=1024)),
    ],
    ids=["linear", "yarn", "yarn-betas-untruncated", "yarn-mscale", "yarn-attention-factor", "llama3"],
)
def test_static_scalings_equal_transformers(kind, extra, factor, head_dim):
    rope = dict(rope_type=kind, factor=factor, **extra)
    want, want_factor = ROPE_INIT_FUNCTIONS[kind](hf_config(head_dim, rope, theta=500000.0), "cpu")
    got, got_factor = ours(head_dim, rope, theta=500000.0)
    torch.testing.assert_close(got, want.float(), rtol=2e-6, atol=0)
    assert math.isclose(got_factor, want_factor, rel_tol=1e-9)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", FACTORS)
def test_ntk_and_ntk_by_parts_equal_their_transformers_spellings(factor, head_dim):
    """NTK-aware (static) is dynamic NTK at the length where its rule gives the factor: with factor f - 1 at twice the
    original length, f' = (f - 1) * 2 - (f - 2) = f. NTK-by-parts is YaRN with its temperature fixed at 1."""
    want, _ = ROPE_INIT_FUNCTIONS["dynamic"](
        hf_config(head_dim, dict(rope_type="dynamic", factor=factor - 1 if factor > 2 else 1.0), max_pos=1024),
        "cpu",
        seq_len=2048,
    )
    if factor == 2.0:  # HF's dynamic with factor 1 is the default: compare with the closed form instead
        want = 1.0 / (10000.0 * 2.0 ** (head_dim / (head_dim - 2))) ** (torch.arange(0, head_dim, 2) / head_dim)
    got, got_factor = ours(head_dim, dict(rope_type="ntk", factor=factor))
    torch.testing.assert_close(got, want.float(), rtol=2e-6, atol=0)
    parts = dict(factor=factor, original_max_position_embeddings=1024)
    want, _ = ROPE_INIT_FUNCTIONS["yarn"](hf_config(head_dim, dict(rope_type="yarn", attention_factor=1.0, **parts)))
    got, got_factor = ours(head_dim, dict(rope_type="ntk_by_parts", **parts))
    torch.testing.assert_close(got, want.float(), rtol=2e-6, atol=0)
    assert got_factor == 1.0


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("length", [100, 1024, 1025, 3000, 9000])
def test_dynamic_ntk_equals_transformers_at_each_length(length, factor, head_dim):
    rope = dict(rope_type="dynamic", factor=factor)
    want, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_config(head_dim, rope, max_pos=1024), "cpu", seq_len=length)
    got, got_factor = ours(
        head_dim, {**rope, "original_max_position_embeddings": 1024}, max_pos=int(1024 * factor), length=length
    )
    torch.testing.assert_close(got, want.float(), rtol=2e-6, atol=0)
    assert got_factor == 1.0


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("max_pos", [2048, 8192])
@pytest.mark.parametrize("length", [None, 1024, 1025])
def test_longrope_equals_transformers(length, max_pos, head_dim):
    rope = dict(rope_type="longrope", original_max_position_embeddings=1024, **longrope_factors(head_dim, head_dim))
    hf = hf_config(head_dim, rope, max_pos=max_pos)
    want, want_factor = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu", seq_len=length)
    got, got_factor = ours(head_dim, rope, max_pos=max_pos, length=length)
    torch.testing.assert_close(got, want.float(), rtol=2e-6, atol=0)
    assert math.isclose(got_factor, want_factor, rel_tol=1e-7)


def test_per_row_lengths_give_per_row_frequencies():
    rope = dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=64)
    rows, _ = inverse_frequencies(16, 10000.0, rope, torch.tensor([10, 200]))  # (B, Dh/2)
    assert rows.shape == (2, 8)
    torch.testing.assert_close(rows[0], inverse_frequencies(16, 10000.0, None)[0])
    torch.testing.assert_close(rows[1], inverse_frequencies(16, 10000.0, rope, torch.tensor(200))[0])


# ---- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scaling, message",
    [
        ({"rope_type": "magic", "factor": 2.0}, "unknown rope_scaling.rope_type 'magic'"),
        ({"rope_type": "linear"}, r"needs the key\(s\) \['factor'\]"),
        ({"rope_type": "dynamic", "factor": 2.0}, "original_max_position_embeddings.*the length the model was trained"),
        ({"rope_type": "linear", "factor": 1.0}, "factor must be > 1"),
        ({"rope_type": "yarn", "factor": 0.5}, "factor must be > 1"),
        ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, r"does not take \['low_freq_factor'\]"),
        ({"rope_type": "linear", "type": "yarn", "factor": 2.0}, "two kinds"),
        ({"rope_type": "yarn", "factor": 2.0, "beta_fast": 1.0, "beta_slow": 4.0}, "beta_fast=1.0 must exceed"),
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
            "high_freq_factor > low_freq_factor",
        ),
        ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "head_dim/2 = 8"),
        ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ],
)
def test_bad_scalings_are_refused(scaling, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(d_model=64, n_heads=4, max_seq_len=256, rope_scaling=scaling).validate()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(positions="alibi", rope_scaling={"rope_type": "yarn", "factor": 2.0}), "needs positions='rope'"),
        (dict(sliding_window=512), "larger than the context max_seq_len=256"),
        (dict(sliding_window=-1), "sliding_window must be an integer >= 0"),
        (dict(sliding_window=16, layer_types=["sliding_attention"]), "for each of the 2 layers"),
        (dict(layer_types=["sliding_attention", "full_attention"]), "sliding_window is 0"),
    ],
)
def test_bad_windows_and_combinations_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=256), **fields}).validate()


# ---- logits against transformers' models ---------------------------------------------------------------------------
BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, rms_norm_eps=1e-6)
ARCHS = {
    "llama": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=2)),
    "mistral": (transformers.MistralConfig, dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None)),
}
OLD = 32  # the "training" length the scalings stretch
SCALED = {  # kind -> (rope_scaling, max_position_embeddings)
    "linear": (dict(rope_type="linear", factor=4.0), 128),
    "dynamic": (dict(rope_type="dynamic", factor=4.0), OLD),  # HF's dynamic scales from max_position_embeddings
    "yarn": (dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=OLD), 128),
    "llama3": (
        dict(
            rope_type="llama3",
            factor=4.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=OLD,
        ),
        128,
    ),  # fmt: skip
    "longrope": (dict(rope_type="longrope", original_max_position_embeddings=OLD, **longrope_factors(8, 0)), 128),
}


@pytest.fixture(scope="module")
def hf_model(hf_reference):
    """hf_model(arch, directory, seed=0, **fields) -> (a random transformers model of ARCHS[arch] with its biases and
    norm gains randomised too, saved in directory; ours loaded from there)."""

    def build(arch: str, directory, seed: int = 0, **fields):
        config_class, arch_fields = ARCHS[arch]
        config = config_class(**{**BASE, "max_position_embeddings": 128, **arch_fields, **fields})
        build_model = transformers.AutoModelForCausalLM.from_config
        model, _ = hf_reference(build_model, config, directory, seed, attn="eager", jitter=("norm",))
        return model, modernlm.load_model(directory)

    return build


def ids_of(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(SCALED))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_scaled_logits_equal_transformers_past_the_original_length(arch, kind, tmp_path, hf_model, hf_logits):
    scaling, max_pos = SCALED[kind]
    hf, model = hf_model(arch, tmp_path, rope_scaling=dict(scaling), max_position_embeddings=max_pos)
    assert model.config.rope_scaling["rope_type"] == kind and model.config.max_seq_len == 128
    ids = ids_of(3 * OLD, batch=2)  # 3x the original length
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)
        cache = KVCache.for_model(model, 2, 128)  # cached: prefill past the original length, then one step
        model(ids[:, :80], input_pos=torch.arange(80), cache=cache)
        step = model(ids[:, 80:81], input_pos=torch.tensor([80]), cache=cache)[:, -1]
    torch.testing.assert_close(step, hf_logits(hf, ids[:, :81])[:, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_length_dependent_generation_across_the_boundary_equals_full_recompute(kind, tmp_path, hf_model, hf_logits):
    """Prefill below the original length, decode across it: each step equals the full recompute of the sequence so
    far (ours and transformers' uncached forward, which both take the frequencies of the current length)."""
    scaling, max_pos = SCALED[kind]
    hf, model = hf_model("llama", tmp_path, rope_scaling=dict(scaling), max_position_embeddings=max_pos)
    ids = ids_of(OLD + 6)
    cache = KVCache.for_model(model, 1, model.config.max_seq_len)
    with torch.no_grad():
        model(ids[:, : OLD - 4], input_pos=torch.arange(OLD - 4), cache=cache)
        for p in range(OLD - 4, OLD + 6):
            step = model(ids[:, p : p + 1], input_pos=torch.tensor([p]), cache=cache)[:, -1]
            full = model(ids[:, : p + 1])[:, -1]
            torch.testing.assert_close(step, full, atol=1e-4, rtol=0)
            torch.testing.assert_close(step, hf_logits(hf, ids[:, : p + 1])[:, -1], atol=1e-4, rtol=0)


def test_rope_parameters_spelling_of_transformers_5(tmp_path, hf_model, hf_logits):
    """transformers 5 writes rope_parameters (theta and scaling together); a Phi-3-style top-level
    original_max_position_embeddings is read into the scaling as transformers does."""
    hf, model = hf_model("llama", tmp_path, rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=5e4,
                         original_max_position_embeddings=OLD))  # fmt: skip
    assert model.config.rope_theta == 5e4 and model.config.rope_scaling["original_max_position_embeddings"] == OLD
    ids = ids_of(100)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)


# ---- sliding windows -----------------------------------------------------------------------------------------------
WINDOWS = {
    "mistral": ("mistral", dict(sliding_window=16)),
    "qwen2-upper-layer": ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1)),
    "mistral-yarn": pytest.param(
        "mistral",
        dict(sliding_window=16, rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=OLD)),
        marks=pytest.mark.slow,
    ),
    "qwen2-dynamic": pytest.param(
        "qwen2",
        dict(
            use_sliding_window=True,
            sliding_window=16,
            max_window_layers=0,
            max_position_embeddings=OLD,
            rope_scaling=dict(rope_type="dynamic", factor=4.0),
        ),
    ),  # fmt: skip
}


@pytest.mark.parametrize("arch, fields", list(WINDOWS.values()), ids=list(WINDOWS))
def test_sliding_window_equals_transformers_past_the_window(arch, fields, tmp_path, hf_model, hf_logits):
    hf, model = hf_model(arch, tmp_path, **fields)
    assert model.config.sliding_window == 16
    ids = ids_of(50, batch=2)
    # cached: a prefill longer than the window, then steps; each equals transformers' forward over the tokens so far
    # (the same thing for static scalings; dynamic NTK takes the frequencies of the length so far; transformers keeps
    # the longest length's frequencies until the input is shorter than the original, so lengths only grow here)
    want = [hf_logits(hf, ids[:, :34])] + [hf_logits(hf, ids[:, : p + 1])[:, -1:] for p in range(34, 50, 5)]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)
    for cache in (KVCache.for_model(model, 2, 50), RollingKVCache(model.config, 2, 50, torch.float32)):
        with torch.no_grad():  # a prefill twice the window, then steps
            got = [model(ids[:, :34], input_pos=torch.arange(34), cache=cache)]
            got += [model(ids[:, p : p + 1], input_pos=torch.tensor([p]), cache=cache) for p in range(34, 50)]
        got = [got[0], *got[1::5]]
        torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), atol=1e-4, rtol=0, msg=type(cache).__name__)


def test_rolling_cache_memory_is_flat_and_it_refuses_to_rewind(tmp_path, hf_model):
    _, model = hf_model("mistral", tmp_path, sliding_window=16)
    small, large = (RollingKVCache(model.config, 1, n, torch.float32) for n in (32, 128))
    assert small.nbytes() == large.nbytes() == KVCache(model.config, 1, 16, torch.float32).nbytes()
    with torch.no_grad():
        model(ids_of(20), cache=small)
        with pytest.raises(ValueError, match="only appends: it holds positions up to 19"):
            model(ids_of(1), input_pos=torch.tensor([5]), cache=small)


def test_window_at_least_the_context_is_full_attention(tmp_path, hf_model):
    _, model = hf_model("mistral", tmp_path, sliding_window=128)
    assert model.config.sliding_window == 0
    _, model = hf_model("llama", tmp_path, sliding_window=8)  # transformers' Llama has no window: ignored there too
    assert model.config.sliding_window == 0


@pytest.mark.parametrize("arch, fields", [WINDOWS["mistral"], WINDOWS["qwen2-upper-layer"]])
def test_windowed_models_save_as_transformers_reads_them(arch, fields, tmp_path, hf_model, hf_logits):
    hf, model = hf_model(arch, tmp_path / "in", **fields)
    modernlm.save_model(model, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = ids_of(50)
    torch.testing.assert_close(hf_logits(again, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)


def test_generation_with_a_window_equals_the_naive_reference(tmp_path, hf_model):
    """generate() keeps a rolling cache for a windowed model; its tokens equal the full recompute's, past the window."""
    from modernlm.generation import generate_naive

    _, model = hf_model("mistral", tmp_path, sliding_window=8)
    prompts = [ids_of(12, seed=3)[0].tolist(), ids_of(5, seed=4)[0].tolist()]
    got = modernlm.generate(model, prompts, 30)
    assert got == generate_naive(model, prompts, 30)


def test_dynamic_ntk_rows_at_their_own_lengths_equal_each_row_alone():
    """A serving batch steps rows at different positions (B, T): each row takes the frequencies of its own length."""
    torch.manual_seed(0)
    scaling = dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=16)
    model = modernlm.Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64,
                                             rope_scaling=scaling)).eval()  # fmt: skip
    ids = [torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    cache = KVCache.for_model(model, 2, 64)
    with torch.no_grad():
        model(ids[0][:, :39], cache=cache.narrow(0, 1, 64))  # row 0 past the original length, row 1 below it
        model(ids[1][:, :12], cache=cache.narrow(1, 1, 64))
        step = torch.cat([ids[0][:, 39:40], ids[1][:, 12:13]])  # (2, 1)
        got = model(step, input_pos=torch.tensor([[39], [12]]), cache=cache)[:, -1]
        want = torch.cat([model(ids[0])[:, 39], model(ids[1][:, :13])[:, 12]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "scaling",
    [
        dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=OLD),
        dict(rope_type="ntk", factor=4.0),
        dict(rope_type="ntk_by_parts", factor=4.0, original_max_position_embeddings=OLD),
    ],
    ids=["dynamic", "ntk", "ntk_by_parts"],
)
def test_scalings_transformers_has_no_name_for_save_as_their_equivalents(scaling, tmp_path, hf_logits):
    """ntk saves as a raised rope_theta, ntk_by_parts as yarn at temperature 1, dynamic with the original length as
    max_position_embeddings (what transformers' dynamic scales from): transformers reads the same logits."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                      rope_scaling=scaling)  # fmt: skip
    model = modernlm.Transformer(cfg).eval()
    modernlm.save_model(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)
    assert modernlm.load_model(tmp_path).config.max_seq_len == 128


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(rope_scaling="yarn"), "rope_scaling must be an object or null"),
        (dict(rope_scaling=dict(rope_type="dynamic", factor="4")), "needs a numeric factor"),
        (dict(rope_scaling=dict(rope_type="yarn", factor=4.0, finetuned=True)), r"does not take \['finetuned'\]"),
        (dict(rope_scaling=dict(rope_type="proportional", factor=2.0)), "unknown rope_scaling.rope_type"),
        (dict(architectures=["Qwen2ForCausalLM"], use_sliding_window=True, max_window_layers="1"), "max_window_layers"),
    ],
)
def test_bad_long_context_fields_in_config_json_are_refused(fields, message, tmp_path):
    from modernlm.checkpoints.hf import config_from_hf

    hf = dict(architectures=["LlamaForCausalLM"], **BASE, num_attention_heads=4, max_position_embeddings=128)
    with pytest.raises(ValueError, match=message):  # CheckpointError or ConfigError (load_hf names the file)
        config_from_hf({**hf, **fields})


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(sliding_window=16), "sliding_window=16"),
        (dict(rope_scaling=dict(rope_type="yarn", factor=4.0, beta_fast=16.0)), r"YaRN keys \['beta_fast'\]"),
        (dict(rope_scaling=dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=32)), "'dynamic'"),
    ],
)
def test_gguf_export_refuses_what_it_cannot_write(fields, message, tmp_path):
    from modernlm.checkpoints.gguf import GGUFError
    from modernlm.export import export_gguf

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=128, **fields)
    with pytest.raises(GGUFError, match=message):
        export_gguf(modernlm.Transformer(cfg), None, tmp_path / "m.gguf", kind="f16")
    assert not (tmp_path / "m.gguf").exists()
