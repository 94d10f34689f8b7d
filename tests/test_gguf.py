"""GGUF in: the embedded SmolLM2 file against transformers' GGUF loader, tiny synthetic files (written with
gguf.GGUFWriter the way llama.cpp's converter writes them) against their original tensors and against transformers,
and the errors for broken or unsupported files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

import modernlm
from modernlm.checkpoints.gguf import GGUFError, config_from_gguf, gguf_to_ours, load_gguf, read_gguf_metadata

# ---- the embedded checkpoint against transformers -----------------------------------------------------------------
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "<|im_start|>user\nWhat is 2 + 2? Answer in one word.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    """transformers' float32 model of the embedded GGUF (dequantized on load): loaded once, ~15 s."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def our_smollm2():
    return modernlm.load_model("smollm2-135m-instruct")


def test_smollm2_weights_are_transformers_weights(hf_smollm2, our_smollm2):
    """Dequantized and un-permuted, every tensor equals transformers' bit for bit."""
    from modernlm.checkpoints.hf import rename

    config = our_smollm2.config
    assert config.tie_embeddings and (config.n_heads, config.n_kv_heads, config.vocab_size) == (9, 3, 49152)
    reference = hf_smollm2.state_dict()
    ours = our_smollm2.state_dict()
    assert len(ours) == 2 + 9 * config.n_layers
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[rename(name, to_hf=True)], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("prompt", PROMPTS, ids=["prose", "code", "chat"])
def test_smollm2_logits_match_transformers(hf_smollm2, our_smollm2, hf_smollm2_tokenizer, prompt):
    ids = torch.tensor([hf_smollm2_tokenizer.encode(prompt, add_special_tokens=False)])  # (1, T)
    with torch.no_grad():
        expected = hf_smollm2(ids).logits  # (1, T, V)
        got = our_smollm2(ids)
    # Measured: max |diff| 3.6e-5..7.2e-5 on logits of magnitude ~40. All of it comes from the RoPE frequencies,
    # which we compute in float64 and transformers in float32; with transformers' inv_freq the logits are identical.
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    assert got[0, -1].argmax() == expected[0, -1].argmax()


# ---- tiny synthetic files -----------------------------------------------------------------------------------------
D, F, H, K, V, LAYERS = 64, 128, 4, 2, 96, 2
DH = D // H


def permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's LlamaModel.permute: HF's rotate-half rows -> adjacent pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_weights(seed: int, qkv_bias: bool = False, tied: bool = False) -> dict[str, np.ndarray]:
    """GGUF tensor names -> float32 arrays in torch order, HF layout (not yet permuted)."""
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    weights = {"token_embd.weight": mat(V, D), "output_norm.weight": norm()}
    if not tied:
        weights["output.weight"] = mat(V, D)
    for i in range(LAYERS):
        b = f"blk.{i}."
        weights |= {b + "attn_norm.weight": norm(), b + "ffn_norm.weight": norm()}
        weights |= {b + "attn_q.weight": mat(H * DH, D), b + "attn_k.weight": mat(K * DH, D)}
        weights |= {b + "attn_v.weight": mat(K * DH, D), b + "attn_output.weight": mat(D, H * DH)}
        weights |= {b + "ffn_gate.weight": mat(F, D), b + "ffn_up.weight": mat(F, D), b + "ffn_down.weight": mat(D, F)}
        if qkv_bias:
            for p, rows in (("q", H * DH), ("k", K * DH), ("v", K * DH)):
                weights[b + f"attn_{p}.bias"] = (0.1 * rng.standard_normal(rows)).astype(np.float32)
    return weights


def tiny_metadata(arch: str, **extra) -> dict:
    return {
        f"{arch}.block_count": LAYERS,
        f"{arch}.context_length": 128,
        f"{arch}.embedding_length": D,
        f"{arch}.feed_forward_length": F,
        f"{arch}.attention.head_count": H,
        f"{arch}.attention.head_count_kv": K,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.rope.dimension_count": DH,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{arch}.vocab_size": V,  # transformers reads the vocabulary size from here (we take it from token_embd)
        **extra,
    }


def write_tiny(write_gguf, path, arch: str, weights: dict, qtype: Q, metadata: dict | None = None):
    """Write as llama.cpp does: Q/K rows permuted for `llama`; matrices in `qtype`, vectors in F32."""
    tensors = {}
    for name, w in weights.items():
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            w = permute_like_llama_cpp(w, H if ".attn_q." in name else K)
        tensors[name] = (w, qtype if w.ndim == 2 else Q.F32)
    return write_gguf(path, arch, metadata or tiny_metadata(arch), tensors)


# max |error| of a round trip, as a fraction of the tensor's max |value|
QUANT_ERROR = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1 / 127, Q.Q5_0: 1 / 16, Q.Q4_1: 1 / 15, Q.Q4_0: 1 / 8}


@pytest.mark.parametrize("qtype", list(QUANT_ERROR), ids=lambda q: q.name)
def test_tensors_round_trip_with_qk_unpermuted(tmp_path, write_gguf, qtype):
    weights = tiny_weights(seed=0)
    path = write_tiny(write_gguf, tmp_path / "tiny.gguf", "llama", weights, qtype)
    config, state_dict = load_gguf(path)
    assert set(state_dict) == {gguf_to_ours(n) for n in weights}
    for name, original in weights.items():
        got = state_dict[gguf_to_ours(name)]
        # exact: the quantization round trip of the *unpermuted* original, so a wrong row order cannot pass
        stored_as = qtype if original.ndim == 2 else Q.F32
        exact = dequantize(quantize(original, stored_as), stored_as).reshape(original.shape)
        torch.testing.assert_close(got, torch.from_numpy(exact.astype(np.float32)), rtol=0, atol=0, msg=name)
        bound = QUANT_ERROR[stored_as] * float(np.abs(original).max()) + 1e-7
        assert (got - torch.from_numpy(original)).abs().max() <= bound, name


def test_config_from_metadata(tmp_path, write_gguf):
    path = write_tiny(write_gguf, tmp_path / "t.gguf", "llama", tiny_weights(1, tied=True), Q.F32)
    config, _ = load_gguf(path)
    expected = dict(d_model=D, n_layers=LAYERS, n_heads=H, n_kv_heads=K, head_dim=DH, ffn_hidden=F, vocab_size=V)
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.tie_embeddings and not config.qkv_bias and config.max_seq_len == 128
    assert config.rope_theta == 10000.0 and config.rope_scaling is None
    assert math.isclose(config.norm_eps, 1e-6, rel_tol=1e-6)
    assert read_gguf_metadata(path)["llama.block_count"] == LAYERS


def llama3_rope_freqs(factor, low=1.0, high=4.0, old_len=8192, theta=500000.0, dim=DH) -> np.ndarray:
    """The `rope_freqs.weight` llama.cpp's converter writes for a Llama 3.1 config (its own loop, restated)."""
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


LLAMA3 = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


@pytest.mark.parametrize(
    "extra, rope_freqs, expected",
    [
        ({"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, None, {"rope_type": "linear", "factor": 4.0}),
        (
            {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0, "rope.scaling.original_context_length": 32},
            None,
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        ),
        ({}, 8.0, {**LLAMA3, "factor": 8.0}),
        ({}, 32.0, {**LLAMA3, "factor": 32.0}),
        ({}, 1.0, None),
    ],
    ids=["linear", "yarn", "llama3.1", "llama3.2", "no-scaling"],
)
def test_rope_scaling(extra, rope_freqs, expected):
    # Llama 3's head_dim of 128 and theta, so the ramp between the two regimes falls on real frequencies
    metadata = tiny_metadata("llama", **{"llama.rope.freq_base": 500000.0, "general.architecture": "llama"})
    metadata |= {"llama.rope.dimension_count": 128, "llama.attention.key_length": 128}
    metadata |= {f"llama.{k}": v for k, v in extra.items()}
    freqs = None if rope_freqs is None else torch.from_numpy(llama3_rope_freqs(rope_freqs, dim=128))
    config = config_from_gguf(metadata, {"token_embd.weight": (V, D)}, freqs)
    assert config.rope_scaling == expected


def test_unknown_rope_freqs_are_refused():
    metadata = tiny_metadata("llama", **{"general.architecture": "llama"})
    freqs = torch.linspace(1, 3, DH // 2)  # no Llama 3 scaling gives these
    with pytest.raises(GGUFError, match="rope_freqs"):
        config_from_gguf(metadata, {"token_embd.weight": (V, D)}, freqs)


# name -> (arch, weights, {GGUF tensor -> type}): the mixes a real file has, against transformers' loader
MIXES = {
    "llama-mixed-quant": (
        "llama",
        dict(seed=3),
        {"token_embd": Q.Q8_0, "attn": Q.Q4_0, "ffn": Q.F16, "output.": Q.Q4_1},
    ),
    "qwen2-biases-tied": ("qwen2", dict(seed=4, qkv_bias=True, tied=True), {"": Q.F32}),
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_synthetic_logits_match_transformers(tmp_path, write_gguf, mix):
    from transformers import AutoModelForCausalLM

    arch, spec, types = MIXES[mix]
    weights = tiny_weights(**spec)
    tensors = {}
    for name, w in weights.items():
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            w = permute_like_llama_cpp(w, H if ".attn_q." in name else K)
        qtype = next((t for part, t in types.items() if part in name), Q.F32) if w.ndim == 2 else Q.F32
        tensors[name] = (w, qtype)
    path = write_gguf(tmp_path / f"{mix}.gguf", arch, tiny_metadata(arch), tensors)
    ours = modernlm.load_model(path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(0))  # (B, T)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, rtol=0, atol=1e-4)


# ---- errors -------------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="does not exist"):
        load_gguf(tmp_path / "nowhere.gguf")


@pytest.mark.parametrize("size", [0, 1000, 200_000])
def test_truncated_file(tmp_path, smollm2_gguf, size):
    path = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        path.write_bytes(f.read(size))
    with pytest.raises(GGUFError, match="truncated or not a GGUF file") as info:
        load_gguf(path)
    assert str(path) in str(info.value)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_text("certainly not a GGUF file, just some text " * 10)
    with pytest.raises(GGUFError, match="truncated or not a GGUF file"):
        load_gguf(path)


def test_unsupported_architecture(tmp_path, write_gguf):
    path = write_gguf(
        tmp_path / "f.gguf", "bloom", {"bloom.block_count": 1}, {"token_embd.weight": (np.ones((4, 32)), Q.F32)}
    )  # (falcon, the file this test wrote before, is supported now)
    with pytest.raises(GGUFError, match=r"unsupported GGUF architecture 'bloom'; supported: llama, mistral, qwen2"):
        load_gguf(path)


def test_unsupported_tensor_type(tmp_path, write_gguf):
    import gguf

    weights = tiny_weights(5, tied=True)
    path = tmp_path / "q81.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in tiny_metadata("llama").items():
        (writer.add_uint32 if isinstance(value, int) else writer.add_float32)(key, value)
    for name, w in weights.items():
        if name == "blk.1.ffn_up.weight":  # Q8_1: a type gguf cannot dequantize, written as raw blocks
            block, block_bytes = gguf.GGML_QUANT_SIZES[Q.Q8_1]
            writer.add_tensor(name, np.zeros((F, D // block * block_bytes), dtype=np.uint8), raw_dtype=Q.Q8_1)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"tensor 'blk\.1\.ffn_up\.weight' has type Q8_1"):
        load_gguf(path)


def test_foreign_tensors_are_refused(tmp_path, write_gguf):
    weights = {**tiny_weights(6), "blk.0.ffn_gate_exps.weight": np.ones((F, D), np.float32)}  # a mixture of experts
    path = write_tiny(write_gguf, tmp_path / "moe.gguf", "llama", weights, Q.F32)
    with pytest.raises(GGUFError, match="ffn_gate_exps"):
        load_gguf(path)


@pytest.mark.parametrize("prompt", PROMPTS[:2], ids=["prose", "code"])
def test_smollm2_greedy_matches_transformers_generate(hf_smollm2, our_smollm2, hf_smollm2_tokenizer, prompt):
    """40 greedy tokens through our cached decode loop equal transformers' `generate` on the same file; neither
    stops at EOS (it is an ordinary token here), so the whole length is compared."""
    from modernlm.generation import generate

    ids = hf_smollm2_tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        out = hf_smollm2.generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    expected = out[0, len(ids) :].tolist()
    assert len(expected) == 40
    assert generate(our_smollm2, ids, 40, temperature=0.0) == [expected]  # the GGUF's default samples


def test_smollm2_chat_reply_stops_at_eos_like_transformers(hf_smollm2, our_smollm2, hf_smollm2_tokenizer):
    from modernlm.generation import generate

    ids = hf_smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a fruit."}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with torch.no_grad():
        out = hf_smollm2.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
    expected = out[0, len(ids) :].tolist()
    got = generate(our_smollm2, ids, 48, temperature=0.0, eos_token_id=hf_smollm2_tokenizer.eos_token_id)
    assert got == [expected]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random scale bytes overflow float16 here and there
@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quants_load_as_gguf_dequantizes_them(tmp_path, qtype):
    """gguf can read but not write K-quants, so the file holds random K-quant blocks; each loaded matrix must be
    `gguf.quants.dequantize` of its bytes (Q and K back in llama.cpp's row order after re-permuting ours)."""
    import gguf

    d, f, heads, kv, vocab = 256, 256, 4, 2, 64  # K-quant blocks span 256 values of a row
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d), "blk.0.attn_q.weight": (d, d), "blk.0.attn_k.weight": (d // 2, d),
              "blk.0.attn_v.weight": (d // 2, d), "blk.0.attn_output.weight": (d, d), "blk.0.ffn_gate.weight": (f, d),
              "blk.0.ffn_up.weight": (f, d), "blk.0.ffn_down.weight": (d, f)}  # fmt: skip
    raw = {
        n: rng.integers(0, 256, (rows, cols // block * nbytes), dtype=np.uint8) for n, (rows, cols) in shapes.items()
    }
    writer = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    for key, value in {"block_count": 1, "context_length": 64, "embedding_length": d, "feed_forward_length": f,
                       "attention.head_count": heads, "attention.head_count_kv": kv}.items():  # fmt: skip
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    for name, data in raw.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones(d, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _, state_dict = load_gguf(tmp_path / "k.gguf")
    for name, data in raw.items():
        got = state_dict[gguf_to_ours(name)].numpy()
        if ".attn_q." in name or ".attn_k." in name:
            got = permute_like_llama_cpp(got, heads if ".attn_q." in name else kv)
        expected = dequantize(data, qtype).reshape(shapes[name])
        np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=name)
