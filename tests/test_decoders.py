"""Qwen3, Phi-3, Gemma 2, Gemma 3 and Falcon as configuration over the one Transformer: logits against transformers on
random-initialised small configs (past the sliding window where there is one; uncached, cached, rolling cache), the
way back out (save_model loads in transformers with the same logits), GGUF files written from their weights the way
llama.cpp's converter writes them, the parameter count, and the config values each refuses by name."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import modernlm
from modernlm.analysis import parameter_counts
from modernlm.checkpoints.hf import CheckpointError
from modernlm.config import ConfigError, ModelConfig
from modernlm.layers.kv_cache import KVCache, RollingKVCache

V, WINDOW = 96, 8
BASE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, max_position_embeddings=64)
# name -> (transformers config class, fields), named after the real models whose features they carry
CONFIGS = {
    "qwen3": (transformers.Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                             rope_theta=1e6, tie_word_embeddings=True)),
    "qwen3-window": (transformers.Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                    use_sliding_window=True, sliding_window=WINDOW,
                                                    max_window_layers=1)),
    "phi3-window": (transformers.Phi3Config, dict(num_attention_heads=4, num_key_value_heads=2,
                                                  sliding_window=WINDOW, pad_token_id=0, eos_token_id=1,
                                                  bos_token_id=1)),
    "phi3-longrope": (transformers.Phi3Config, dict(num_attention_heads=4, num_key_value_heads=4, pad_token_id=0,
                                                    eos_token_id=1, bos_token_id=1, original_max_position_embeddings=16,
                                                    rope_scaling=dict(rope_type="longrope",
                                                                      short_factor=[1.0 + i / 10 for i in range(8)],
                                                                      long_factor=[2.0 + i / 5 for i in range(8)]))),
    "gemma2": (transformers.Gemma2Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                               sliding_window=WINDOW, query_pre_attn_scalar=20,
                                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                                   sliding_window=WINDOW, query_pre_attn_scalar=32,
                                                   sliding_window_pattern=2, rope_theta=1e6,
                                                   rope_local_base_freq=1e4,
                                                   rope_scaling=dict(rope_type="linear", factor=8.0))),
    "falcon-7b": (transformers.FalconConfig, dict(num_attention_heads=4, multi_query=True, parallel_attn=True,
                                                  bias=False, ffn_hidden_size=96)),
    "falcon-mha-sequential-bias": (transformers.FalconConfig, dict(num_attention_heads=4, multi_query=False,
                                                                   parallel_attn=False, bias=True,
                                                                   tie_word_embeddings=False)),
}  # fmt: skip
WINDOWED = ("qwen3-window", "phi3-window", "gemma2", "gemma3")


def make_hf(name: str, seed: int = 0, **fields):
    config_class, arch_fields = CONFIGS[name]
    torch.manual_seed(seed)
    fields = {**BASE, **arch_fields, **fields}
    if config_class is transformers.FalconConfig:
        fields.pop("intermediate_size")
    config = config_class(**fields)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # biases and norm gains start at 0 and 1; randomise them so a missed one shows
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ids_of(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(CONFIGS))
def pair(request, tmp_path):
    hf = make_hf(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return request.param, hf, modernlm.load_model(tmp_path / "hf"), tmp_path


def test_logits_equal_transformers_uncached_and_cached(pair, hf_logits):
    name, hf, model, _ = pair
    ids = ids_of(40, batch=2)  # five windows long
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)
    want = [hf_logits(hf, ids[:, :20])] + [hf_logits(hf, ids[:, : p + 1])[:, -1:] for p in range(20, 40, 5)]
    caches = [KVCache.for_model(model, 2, 40)]
    if model.config.sliding_window:
        caches.append(RollingKVCache(model.config, 2, 40, torch.float32))
    for cache in caches:
        with torch.no_grad():  # a prefill past the window, then steps
            got = [model(ids[:, :20], input_pos=torch.arange(20), cache=cache)]
            got += [model(ids[:, p : p + 1], input_pos=torch.tensor([p]), cache=cache) for p in range(20, 40)]
        got = [got[0], *got[1::5]]
        torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), atol=1e-4, rtol=0, msg=type(cache).__name__)


def test_config_carries_the_member(pair):
    name, _, model, _ = pair
    cfg = model.config
    if name in WINDOWED:
        assert cfg.sliding_window == WINDOW
    expected = {
        "qwen3": dict(qk_norm=True, head_dim=24, tie_embeddings=True),
        "phi3-longrope": dict(rope_scaling=dict(rope_type="longrope")),
        "gemma2": dict(sandwich_norm=True, scale_embeddings=True, attn_softcap=5.0, logit_softcap=3.0, ffn="geglu",
                       attn_scale=20**-0.5, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        "gemma3": dict(qk_norm=True, sandwich_norm=True, attn_softcap=None, local_rope_theta=1e4, rope_theta=1e6),
        "falcon-7b": dict(parallel_block=True, n_kv_heads=1, norm="layernorm", ffn="gelu_erf"),
        "falcon-mha-sequential-bias": dict(parallel_block=False, n_kv_heads=4, qkv_bias=True, mlp_bias=True),
    }.get(name, {})  # fmt: skip
    for field, value in expected.items():
        got = getattr(cfg, field)
        assert (got["rope_type"] == value["rope_type"]) if field == "rope_scaling" else got == value, field
    measured = sum(p.numel() for p in model.parameters())
    assert parameter_counts(cfg)["total"] == measured


def test_save_model_loads_in_transformers_with_the_same_logits(pair, hf_logits):
    name, hf, model, tmp_path = pair
    modernlm.save_model(model, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(again) is type(hf)
    ids = ids_of(30, batch=2)
    torch.testing.assert_close(hf_logits(again, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(modernlm.load_model(tmp_path / "out")(ids), model(ids), atol=1e-6, rtol=0)


def test_softcapping_takes_the_explicit_path_only_when_asked():
    from modernlm import Transformer

    plain = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, max_seq_len=32)
    assert Transformer(plain).blocks[0].attn.softcap is None
    torch.manual_seed(0)
    capped = Transformer(ModelConfig(**{**plain.to_dict(), "attn_softcap": 1e9})).eval()  # a cap this high is none
    uncapped = Transformer(plain).eval()
    uncapped.load_state_dict(capped.state_dict())
    ids = ids_of(12, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(capped(ids), uncapped(ids), atol=1e-5, rtol=0)


# ---- refused by name ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("falcon-7b", dict(new_decoder_architecture=True, num_kv_heads=2), "new_decoder_architecture=true"),
        ("falcon-7b", dict(alibi=True), "alibi=true"),
        ("falcon-7b", dict(activation="silu"), "activation 'silu' is not supported"),
        ("gemma2", dict(hidden_activation="silu"), "hidden_activation 'silu' is not supported"),
        ("gemma3", dict(use_bidirectional_attention=True), "use_bidirectional_attention=true"),
        ("phi3-window", dict(partial_rotary_factor=0.75), "partial_rotary_factor=0.75"),
    ],
)
def test_unimplemented_config_values_are_refused_by_name(name, fields, message, tmp_path):
    config = make_hf(name).config.to_dict()
    config.update(fields)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        modernlm.load_config(tmp_path)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(attn_softcap=0.0), "attn_softcap must be > 0"),
        (dict(logit_softcap=-1.0), "logit_softcap must be > 0"),
        (dict(sandwich_norm=True, norm_placement="post"), "sandwich_norm is a pre-norm block"),
        (dict(parallel_block=True, sandwich_norm=True), "cannot both be set"),
        (dict(qk_norm=True, shared_qk=True), "qk_norm normalises queries and keys apart"),
        (dict(local_rope_theta=1e4), "local_rope_theta is the RoPE base of a decoder's sliding-window layers"),
        (dict(family="encoder", causal=False, head="none", qk_norm=True), "qk_norm=True is implemented only for"),
    ],
)
def test_bad_block_options_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**dict(vocab_size=V, d_model=32, n_layers=1, n_heads=4, max_seq_len=32), **fields}).validate()


def test_falcon_gqa_cannot_be_saved(tmp_path):
    model = modernlm.Transformer(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                                             norm="layernorm", ffn="gelu_erf", parallel_block=True, max_seq_len=32))
    with pytest.raises(CheckpointError, match=r"cannot save as FalconForCausalLM: n_kv_heads"):
        modernlm.save_model(model, tmp_path)


# ---- GGUF in: files written from a transformers model's weights as llama.cpp's converter writes them ----------------
GGUF_CONFIGS = {  # small configs inside what transformers' GGUF loader reads back (its defaults for the rest)
    "qwen3": (transformers.Qwen3Config, dict(num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                                             rope_theta=1e6)),
    "phi3": (transformers.Phi3Config, dict(num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)),
    "gemma2": (transformers.Gemma2Config, dict(num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                                               sliding_window=WINDOW, attn_logit_softcapping=50.0,
                                               final_logit_softcapping=30.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                                                   num_hidden_layers=6, sliding_window=WINDOW, rope_theta=1e6)),
    "falcon": (transformers.FalconConfig, dict(num_attention_heads=4, ffn_hidden_size=256)),
}  # fmt: skip
GGUF_NAMES = [  # (transformers name pattern, GGUF name): llama.cpp's tensor map for these architectures
    (r"model\.embed_tokens\.", "token_embd."), (r"model\.norm\.", "output_norm."), (r"lm_head\.", "output."),
    (r"model\.layers\.(\d+)\.input_layernorm\.", r"blk.\1.attn_norm."),
    (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.", r"blk.\1.attn_\2."),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.", r"blk.\1.attn_output."),
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.", r"blk.\1.attn_\2_norm."),
    (r"model\.layers\.(\d+)\.self_attn\.qkv_proj\.", r"blk.\1.attn_qkv."),
    (r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.", r"blk.\1.ffn_norm."),
    (r"model\.layers\.(\d+)\.post_feedforward_layernorm\.", r"blk.\1.post_ffw_norm."),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.", r"blk.\1.ffn_\2."),
    (r"model\.layers\.(\d+)\.mlp\.gate_up_proj\.", r"blk.\1.ffn_up."),
    (r"transformer\.word_embeddings\.", "token_embd."), (r"transformer\.ln_f\.", "output_norm."),
    (r"transformer\.h\.(\d+)\.input_layernorm\.", r"blk.\1.attn_norm."),
    (r"transformer\.h\.(\d+)\.self_attention\.query_key_value\.", r"blk.\1.attn_qkv."),
    (r"transformer\.h\.(\d+)\.self_attention\.dense\.", r"blk.\1.attn_output."),
    (r"transformer\.h\.(\d+)\.mlp\.dense_h_to_4h\.", r"blk.\1.ffn_up."),
    (r"transformer\.h\.(\d+)\.mlp\.dense_4h_to_h\.", r"blk.\1.ffn_down."),
]  # fmt: skip


def gguf_tensors(arch: str, hf) -> dict:
    """GGUF name -> (float32 array, F32): renamed, Gemma's norm gains stored as 1 + w, tied heads left out."""
    import re

    from gguf import GGMLQuantizationType as Q

    post_attention = "post_attention_norm." if arch.startswith("gemma") else "ffn_norm."
    names = [*GGUF_NAMES, (r"model\.layers\.(\d+)\.post_attention_layernorm\.", rf"blk.\1.{post_attention}")]
    out = {}
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and hf.config.tie_word_embeddings:
            continue
        gguf_name = next(re.sub(p, g, name) for p, g in names if re.match(p, name))
        value = tensor.float() + (1.0 if arch.startswith("gemma") and "norm" in name else 0.0)
        out[gguf_name] = (value.numpy(), Q.F32)
    return out


def gguf_metadata(arch: str, config) -> dict:
    meta = {
        "block_count": config.num_hidden_layers, "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size, "attention.head_count": config.num_attention_heads,
        "feed_forward_length": getattr(config, "ffn_hidden_size", None) or config.intermediate_size,
        "attention.head_count_kv": 1 if arch == "falcon" else config.num_key_value_heads, "vocab_size": V,
    }  # fmt: skip
    if arch == "falcon":
        meta["attention.layer_norm_epsilon"] = config.layer_norm_epsilon
    else:
        rope = config.rope_parameters
        theta = rope["full_attention"]["rope_theta"] if "full_attention" in rope else rope["rope_theta"]
        meta |= {"attention.layer_norm_rms_epsilon": config.rms_norm_eps, "rope.freq_base": float(theta)}
    if arch in ("qwen3", "gemma2", "gemma3"):
        meta["attention.key_length"] = meta["attention.value_length"] = config.head_dim
    if arch.startswith("gemma"):
        meta["attention.sliding_window"] = config.sliding_window
    if arch == "gemma2":
        meta |= {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    return {**{f"{arch}.{k}": v for k, v in meta.items()}, "tokenizer.ggml.padding_token_id": 0}


@pytest.mark.parametrize("arch", sorted(GGUF_CONFIGS))
def test_gguf_files_load_with_transformers_logits(arch, tmp_path, write_gguf, hf_logits):
    config_class, fields = GGUF_CONFIGS[arch]
    CONFIGS[f"gguf-{arch}"] = (config_class, fields)
    try:
        hf = make_hf(f"gguf-{arch}")
    finally:
        del CONFIGS[f"gguf-{arch}"]
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, gguf_metadata(arch, hf.config), gguf_tensors(arch, hf))
    ours = modernlm.load_model(path)
    ids = ids_of(24, batch=2)  # three windows long
    with torch.no_grad():
        got = ours(ids)
    torch.testing.assert_close(got, hf_logits(hf, ids), atol=1e-4, rtol=0)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    torch.testing.assert_close(got, hf_logits(reference.eval(), ids), atol=1e-4, rtol=0)


# ---- the embedded Gemma 3 270M (Q4_K_M) against transformers' own load of the same file ----------------------------
GEMMA_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "<start_of_turn>user\nName three colours.<end_of_turn>\n<start_of_turn>model\n",
    "A river runs through the old town, past the mill and the church. " * 40,  # past the 512-token window
]


@pytest.fixture(scope="module")
def gemma_270m():
    """(ours, transformers' model, transformers' tokenizer) of the embedded file: each dequantizes it (~1 min)."""
    from modernlm.checkpoints.sources import resolve

    path = resolve("gemma-3-270m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return modernlm.load_model("gemma-3-270m"), hf.eval(), tokenizer


@pytest.mark.slow
def test_gemma_270m_config_is_the_released_model(gemma_270m):
    ours, _, _ = gemma_270m
    cfg = ours.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size) == (
        18, 640, 4, 1, 256, 262144)  # fmt: skip
    assert cfg.sliding_window == 512 and cfg.layer_types.count("full_attention") == 3 and cfg.local_rope_theta == 1e4
    assert parameter_counts(cfg)["total"] == sum(p.numel() for p in ours.parameters()) == 268_098_176


@pytest.mark.slow
@pytest.mark.parametrize("prompt", GEMMA_PROMPTS, ids=["prose", "code", "chat", "past-the-window"])
def test_gemma_270m_greedy_tokens_equal_transformers(gemma_270m, prompt):
    from modernlm.generation import generate

    ours, hf, tokenizer = gemma_270m
    ids = tokenizer.encode(prompt)  # with <bos>, as Gemma expects
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generate(ours, ids, 16) == [out[0, len(ids) :].tolist()]


@pytest.mark.slow
def test_gemma_270m_chats_like_transformers(gemma_270m, capsys):
    """`modernlm generate --model gemma-3-270m --chat`: `load` gives the tokenizer (the file's SentencePiece vocabulary
    and the chat template shipped beside it), whose prompt ids are transformers' `apply_chat_template` ids, and the
    command prints the text of transformers' greedy tokens for them."""
    from modernlm.cli.__main__ import main
    from modernlm.generation import generate
    from modernlm.generation.inputs import encode_prompt

    _, hf, hf_tokenizer = gemma_270m
    model, tokenizer = modernlm.load("gemma-3-270m")
    question = "What is the capital of France?"
    messages = [{"role": "user", "content": question}]
    hf_tokenizer.chat_template = tokenizer.chat_template  # the file carries none
    ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = list(ids["input_ids"])
    assert encode_prompt(tokenizer, tokenizer.apply_chat_template(messages), chat=True) == ids
    assert ids[:2] == [2, 105]  # <bos><start_of_turn>
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = out[0, len(ids) :].tolist()
    assert generate(model, ids, 16) == [expected]
    assert main(["generate", "--model", "gemma-3-270m", "--chat", "--prompt", question, "-n", "16", "-q"]) == 0
    reply = expected[: expected.index(1)] if 1 in expected else expected  # the command stops at <eos>
    assert capsys.readouterr().out == hf_tokenizer.decode(reply) + "\n"


# ---- accounting: info, memory and flops over the new members -------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen3", "phi3-window", "gemma3", "falcon-mha-sequential-bias"])
def test_info_memory_and_flops_describe_the_member(name, tmp_path, capsys):
    from modernlm.analysis import training_memory
    from modernlm.cli.__main__ import main

    hf = make_hf(name)
    hf.save_pretrained(tmp_path)
    model = modernlm.load_model(tmp_path)
    measured = sum(p.numel() for p in model.parameters())
    assert main(["info", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"]["total"] == measured == sum(p.numel() for p in hf.parameters())
    assert main(["memory", str(tmp_path), "--seq-len", "32", "--json"]) == 0
    memory = json.loads(capsys.readouterr().out)
    parameter_bytes = training_memory(model.config, 8, 32, precision="bf16")["parameters"]
    assert parameter_bytes == measured * 4  # fp32 master weights under bf16 autocast
    assert memory and main(["flops", str(tmp_path), "--seq-len", "32"]) == 0
    assert f"{measured:,} parameters" in capsys.readouterr().out
