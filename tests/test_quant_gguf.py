"""GGUF blocks kept quantized: our packing against `gguf.quants.quantize` byte for byte, our unpacking against
`gguf.quants.dequantize`, tiny files loaded kept against the float loader, and the real SmolLM2 kept in Q4_1 against
the same weights dequantized."""

from __future__ import annotations

import logging

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

import modernlm
from modernlm.generation import generate
from modernlm.quant import QuantEmbedding, QuantError, QuantLinear, dequantize_model, plain
from modernlm.quant.gguf_blocks import QUANTIZERS, unpack
from test_gguf import H, K, V, permute_like_llama_cpp, tiny_metadata, tiny_weights


def values(rows=24, cols=256, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (scale 0)
    w[1, :32] = 0.5  # a constant block
    w[2, 5] = 40.0  # an outlier
    return w


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_packing_equals_gguf_quantize(kind):
    w = values()
    assert np.array_equal(QUANTIZERS[kind](w), gguf.quants.quantize(w, Q[kind]))


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_unpacking_equals_gguf_dequantize(kind):
    raw = gguf.quants.quantize(values(seed=1), Q[kind])
    weight = unpack(kind, raw, 256)
    want = gguf.quants.dequantize(raw, Q[kind])
    got = weight.dequantize().numpy()
    if kind == "Q4_1":  # (q - 8) d + (m + 8 d) against q d + m: float32 rounding apart
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    else:  # the same products in float32: bit for bit
        assert np.array_equal(got, want)


def q4_k_blocks(rows: int, cols: int, seed=0) -> np.ndarray:
    """Random Q4_K rows whose d and dmin are sane fp16 values (random bytes there overflow)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // 256, 144), dtype=np.uint8)
    raw[..., 0:2] = rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float16)[..., None].view(np.uint8)
    raw[..., 2:4] = rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def test_q4_k_unpacking_equals_gguf_dequantize():
    raw = q4_k_blocks(16, 512)
    want = gguf.quants.dequantize(raw, Q.Q4_K)
    got = unpack("Q4_K", raw, 512).dequantize().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_a_type_without_a_kernel_is_refused_by_name():
    with pytest.raises(QuantError, match="GGUF type Q6_K cannot be kept quantized; kept types: Q8_0, Q4_0"):
        unpack("Q6_K", np.zeros((1, 210), np.uint8), 256)


# ---- whole files --------------------------------------------------------------------------------------------------
def write_mix(write_gguf, path, types: dict, tied=False):
    tensors = {}
    for name, w in tiny_weights(seed=5, tied=tied).items():
        if ".attn_q." in name or ".attn_k." in name:
            w = permute_like_llama_cpp(w, H if ".attn_q." in name else K)
        qtype = next((t for part, t in types.items() if part in name), Q.F32) if w.ndim == 2 else Q.F32
        tensors[name] = (w, qtype)
    return write_gguf(path, "llama", tiny_metadata("llama"), tensors)


def test_kept_file_equals_the_float_loader(tmp_path, write_gguf, caplog):
    types = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q4_0, "ffn": Q.Q4_1,
             "attn_output": Q.Q5_0, "output.": Q.Q4_0}  # fmt: skip
    path = write_mix(write_gguf, tmp_path / "mix.gguf", types)
    with caplog.at_level(logging.INFO, logger="modernlm"):
        kept = modernlm.load_model(path, quantize="gguf")
    assert any("dequantized to float32" in r.message and "Q5_0" in r.message for r in caplog.records)
    assert isinstance(kept.embed, QuantEmbedding) and isinstance(kept.lm_head, QuantLinear)
    assert isinstance(kept.blocks[0].attn.q_proj, QuantLinear)
    assert not isinstance(kept.blocks[0].attn.o_proj, QuantLinear)  # Q5_0: no kernel, dequantized
    assert kept.quantization["kept"] == {"Q8_0": 1, "Q4_0": 5, "Q4_1": 8}
    floats = modernlm.load_model(path)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = floats(ids)
        with plain():  # the kept blocks dequantize to exactly what gguf's dequantize gives the float loader
            torch.testing.assert_close(kept(ids), want, rtol=0, atol=1e-4)
        assert float((kept(ids) - want).norm() / want.norm()) < 1e-2  # the kernels' bf16 activations


def test_tied_q4_1_embedding_is_the_head(tmp_path, write_gguf):
    path = write_mix(write_gguf, tmp_path / "tied.gguf", {"": Q.Q4_1}, tied=True)
    kept = modernlm.load_model(path, quantize="gguf")
    assert kept.lm_head is None and isinstance(kept.embed, QuantEmbedding)
    ids = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), plain():
        torch.testing.assert_close(kept(ids), modernlm.load_model(path)(ids), rtol=0, atol=1e-4)


def test_gguf_quantize_needs_a_gguf_file(tmp_path):
    modernlm.save_model(modernlm.Transformer(modernlm.preset("llama-tiny")), tmp_path)
    with pytest.raises(QuantError, match="is not a .gguf file; use 'int8' or 'int4'"):
        modernlm.load_model(tmp_path, quantize="gguf")


@pytest.mark.slow
def test_smollm2_greedy_kept_in_q4_1_equals_the_same_weights_dequantized(smollm2_gguf):
    tokenizer = modernlm.load_tokenizer(smollm2_gguf)
    kept = modernlm.load_model(smollm2_gguf, quantize="gguf")
    assert kept.quantization["kept"] == {"Q8_0": 1, "Q4_1": 210} and not kept.quantization["dequantized"]
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "What is gravity?"}]))
    with torch.no_grad(), plain():  # the kept blocks against gguf's own dequantization (the float loader)
        torch.testing.assert_close(
            kept(torch.tensor([prompt])), modernlm.load_model(smollm2_gguf)(torch.tensor([prompt])), rtol=0, atol=1e-3
        )
    fast = generate(kept, prompt, 32, temperature=0.0)[0]  # the GGUF's own default samples
    twin = generate(dequantize_model(kept), prompt, 32, temperature=0.0)[0]
    assert fast == twin and len(fast) == 32


def test_q4_k_file_kept_equals_the_float_loader(tmp_path):
    """A Q4_K file (gguf cannot write K-quants, so its blocks are random with sane scales): kept, its logits equal
    the float loader's (gguf's dequantize), Q and K rows unpermuted with their scales."""
    d, f, heads, kv, vocab = 256, 512, 4, 2, 64
    shapes = {"token_embd.weight": (vocab, d), "blk.0.attn_q.weight": (d, d), "blk.0.attn_k.weight": (d // 2, d),
              "blk.0.attn_v.weight": (d // 2, d), "blk.0.attn_output.weight": (d, d), "blk.0.ffn_gate.weight": (f, d),
              "blk.0.ffn_up.weight": (f, d), "blk.0.ffn_down.weight": (d, f)}  # fmt: skip
    writer = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    for key, value in {"block_count": 1, "context_length": 64, "embedding_length": d, "feed_forward_length": f,
                       "attention.head_count": heads, "attention.head_count_kv": kv}.items():  # fmt: skip
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    for i, (name, (rows, cols)) in enumerate(shapes.items()):
        writer.add_tensor(name, q4_k_blocks(rows, cols, seed=i), raw_dtype=Q.Q4_K)
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones(d, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    kept = modernlm.load_model(tmp_path / "k.gguf", quantize="gguf")
    assert kept.quantization["kept"] == {"Q4_K": 8}
    ids = torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), plain():
        torch.testing.assert_close(kept(ids), modernlm.load_model(tmp_path / "k.gguf")(ids), rtol=1e-5, atol=1e-4)


def test_k_quant_writers_round_trip_through_gguf_and_our_reader():
    """Q4_K and Q6_K bytes written by quant/kquants.py: gguf's dequantize reads them back within the type's rounding
    (a zero row exactly), and our own Q4_K reader agrees with gguf's on them."""
    from modernlm.quant.gguf_blocks import unpack
    from modernlm.quant.kquants import quantize_q4_k, quantize_q6_k

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 512)) * 0.05).astype(np.float32)
    w[1, 7], w[2, 300], w[3] = 0.9, -1.2, 0.0  # outliers, and a row of zeros
    for quantize, kind, bound in ((quantize_q4_k, "Q4_K", 0.1), (quantize_q6_k, "Q6_K", 0.03)):
        data = quantize(w)
        assert data.shape == (6, 512 // 256 * {"Q4_K": 144, "Q6_K": 210}[kind])
        back = gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, kind))
        assert np.sqrt(((back - w) ** 2).mean() / (w**2).mean()) < bound and not back[3].any()
        if kind == "Q4_K":
            ours = unpack("Q4_K", data, 512).dequantize().numpy()
            np.testing.assert_allclose(ours, back, rtol=0, atol=1e-6)
