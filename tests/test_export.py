"""GGUF export against transformers' GGUF loader: the exported file's logits equal ours within the type's rounding,
the tokenizer and chat template survive, and models GGUF cannot describe are refused before writing."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.checkpoints.gguf import GGUFError
from modernlm.export import export_gguf

# max |logit error| of the exported file against our float model, as a fraction of the logits' max |value|
# (random Gaussian weights through two blocks: the worst case for rounding)
TOLERANCE = {"f16": 2e-3, "q8_0": 5e-2, "q4_0": 0.3, "q4_k_m": 0.3}  # q4_k_m here: widths of 64, the fallbacks


@pytest.fixture(scope="module")
def hf_llama(hf_reference):
    """hf_llama(path, vocab_size): a random transformers Llama, saved, loaded as ours."""

    def build(path, vocab_size: int):
        config = transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.05,
        )  # fmt: skip
        hf_reference(transformers.LlamaForCausalLM, config, path)
        return modernlm.load_model(path)

    return build


@pytest.fixture(scope="module")
def ours(tmp_path_factory, hf_llama):
    return hf_llama(tmp_path_factory.mktemp("hf"), 320)


@pytest.mark.parametrize("kind", list(TOLERANCE))
def test_transformers_loads_the_export(ours, tmp_path, kind):
    out = export_gguf(ours, None, tmp_path / f"m.{kind}.gguf", kind=kind)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ours(ids), hf(ids).logits
        again = modernlm.load_model(out)(ids)  # our own loader reads what we wrote
    assert (got - want).abs().max() <= TOLERANCE[kind] * want.abs().max()
    torch.testing.assert_close(again, got, rtol=0, atol=1e-4)


def test_q4_k_m_is_llama_quantizes_mix_and_dequantizes_to_our_weights(tmp_path):
    """Widths that are multiples of 256, 8 layers, an untied output: every matrix has the type llama-quantize gives
    it in a Q4_K_M file, and gguf's own dequantize of its bytes is our weight within the type's rounding."""
    import gguf
    import numpy as np

    from modernlm.export.gguf import permute_qk, q4_k_m_type
    from modernlm.export.gguf import use_more_bits as more

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.05,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    model = modernlm.load_model(tmp_path / "hf")
    out = export_gguf(model, None, tmp_path / "m.gguf", kind="q4_k_m")
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    from modernlm.checkpoints.gguf import NAME_TABLE

    weights = {NAME_TABLE.theirs(k): v.float() for k, v in model.state_dict().items()}
    six = {t.name for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q6_K}
    assert six == {"output.weight"} | {f"blk.{i}.{m}.weight" for i in (0, 3, 6, 7) for m in ("attn_v", "ffn_down")}
    assert [i for i in range(8) if more(i, 8)] == [0, 3, 6, 7]
    for t in reader.tensors:
        if len(t.shape) == 1:
            continue
        want = weights[t.name]
        if ".attn_q." in t.name or ".attn_k." in t.name:
            want = permute_qk(want, 4 if ".attn_q." in t.name else 2)
        assert t.tensor_type.name == q4_k_m_type(t.name, 8, tied=False)
        got = torch.from_numpy(np.asarray(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(want.shape)
        error = float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())
        assert error < (0.03 if t.tensor_type.name == "Q6_K" else 0.1), (t.name, error)
    assert q4_k_m_type("token_embd.weight", 8, tied=True) == "Q6_K"  # a tied embedding is the output
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    q4_0 = export_gguf(model, None, tmp_path / "q4_0.gguf", kind="q4_0")
    with torch.no_grad():  # through 8 random layers the rounding compounds: Q4_K_M loses less of it than Q4_0
        want, mix, plain = model(ids), modernlm.load_model(out)(ids), modernlm.load_model(q4_0)(ids)
    assert (mix - want).pow(2).mean() < (plain - want).pow(2).mean()


@pytest.mark.slow  # ~30 s: three parses of a 49k-token vocabulary
def test_tokenizer_and_chat_template_survive(smollm2_gguf, hf_smollm2_tokenizer, tmp_path, hf_llama):
    ours = hf_llama(tmp_path / "hf", 49152)  # SmolLM2's vocabulary size, so its tokenizer fits
    source = modernlm.load_tokenizer(smollm2_gguf)
    out = export_gguf(ours, source, tmp_path / "t.gguf", kind="q8_0", tokenizer_pre="smollm")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    mine = modernlm.load_tokenizer(out)
    text = "Héllo wörld! The café's 3 ferries left at 10:45, didn't they?  <|im_start|>user"
    assert theirs.encode(text, add_special_tokens=False) == hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert mine.encode(text) == source.encode(text)
    assert mine.chat_template == source.chat_template and mine.eos_token_id == source.eos_token_id
    messages = [{"role": "user", "content": "Hi"}]
    assert mine.apply_chat_template(messages) == source.apply_chat_template(messages)


def test_unmappable_models_are_refused(tmp_path):
    model = modernlm.Transformer(modernlm.preset("gpt-2017", vocab_size=64, d_model=32, n_layers=1, n_heads=2))
    with pytest.raises(GGUFError, match="no GGUF mapping: positions='sinusoidal'.*norm='layernorm'"):
        export_gguf(model, None, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(GGUFError, match="a Linear has no GGUF mapping"):
        export_gguf(torch.nn.Linear(2, 2), None, tmp_path / "z.gguf")
    with pytest.raises(GGUFError, match="unknown GGUF export type 'q5_k'"):
        export_gguf(modernlm.Transformer(modernlm.preset("llama-tiny")), None, tmp_path / "y.gguf", kind="q5_k")


def test_cli_export_of_a_quantized_model(tmp_path, capsys):
    from modernlm.cli.__main__ import main

    torch.manual_seed(0)
    modernlm.save_model(modernlm.Transformer(modernlm.preset("llama-tiny", ffn_hidden=192)), tmp_path / "m")
    assert main(["export", "--type", "q4_0", str(tmp_path / "m"), str(tmp_path / "m.gguf")]) == 0
    assert "q4_0" in capsys.readouterr().out
    model = modernlm.load_model(tmp_path / "m.gguf", quantize="gguf")
    assert model.quantization["kept"] == {"Q8_0": 1, "Q4_0": 15}  # the embedding in q8_0; 14 linears, the head


@pytest.mark.slow
def test_llama_cpp_runs_the_export_and_agrees_until_a_near_tie(smollm2_gguf, tmp_path):
    """llama.cpp (llama-cpp-python, which builds it: `pip install llama-cpp-python`, minutes) loads SmolLM2 exported
    as q8_0, tokenizes the chat prompt as we do, and greedy-decodes our tokens until the first place where our own
    top two logits are within 1 of each other (llama.cpp rounds activations to 8 bits for its dot products)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (it builds llama.cpp)")
    from modernlm.generation import generate

    tokenizer = modernlm.load_tokenizer(smollm2_gguf)
    out = export_gguf(
        modernlm.load_model(smollm2_gguf), tokenizer, tmp_path / "s.gguf", kind="q8_0", tokenizer_pre="smollm"
    )
    ours = modernlm.load_model(out)  # the q8_0 weights as written, dequantized
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is gravity?"}])
    prompt = tokenizer.encode(text)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(int(token))
        if len(theirs) == 32:
            break
    mine = generate(ours, prompt, 32, temperature=0.0)[0]
    first = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), None)
    if first is not None:
        with torch.no_grad():
            logits = ours(torch.tensor([prompt + mine[:first]]))[0, -1]
        assert float(logits[mine[first]] - logits[theirs[first]]) < 1.0, (first, mine, theirs)


TRAIN_TEXT = (
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. Errors should "
    "never pass silently, unless explicitly silenced. It's 1,234 -- or 5678!  Flat is better than nested.\n"
)


def _greedy_llama_cpp(llm, prompt: list[int], n: int) -> list[int]:
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(int(token))
        if len(theirs) == n:
            return theirs
    return theirs


@pytest.mark.slow  # ~1 min: a short training run, then llama.cpp
def test_a_model_we_trained_exports_and_runs_in_llama_cpp(tmp_path, monkeypatch):
    """`modernlm train` (our byte-level BPE, our weights) -> `modernlm export` -> llama.cpp: it tokenizes text with
    digits, apostrophes and runs of punctuation and spaces as our tokenizer does (the pre-tokenizer is inferred as
    GPT-2's), and greedy-decodes our tokens until our own top two logits come within 0.1 (f16 rounding)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (it builds llama.cpp)")
    from modernlm.cli.__main__ import main
    from modernlm.training import TrainConfig, train

    monkeypatch.setenv("MODERNLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "text.txt").write_text(TRAIN_TEXT * 8)
    overrides = {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 128}
    run = TrainConfig(
        out_dir=str(tmp_path / "run"), data=[str(tmp_path / "text.txt")], val_fraction=0.0, vocab_size=320,
        model="llama-tiny", model_overrides=overrides, seq_len=32, batch_size=8, max_steps=60, warmup_steps=4,
        lr=3e-3, eval_interval=0, save_interval=60, sample_tokens=0, progress=False,
    )  # fmt: skip
    train(run)
    out = tmp_path / "trained.gguf"
    assert main(["export", "--format", "gguf", "--type", "f16", run.out_dir, str(out)]) == 0
    tokenizer, ours = modernlm.load_tokenizer(run.out_dir), modernlm.load_model(out)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, n_threads=2, verbose=False)
    tricky = "x = a+b; it's 12345 -- ok!!  Hello\n\n  world's   $100^2 <tag>|pipe ~tilde"
    assert llm.tokenize(tricky.encode(), add_bos=False, special=True) == tokenizer.encode(tricky)
    prompt = tokenizer.encode("Errors should never pass silently. Beautiful is")
    theirs, mine = _greedy_llama_cpp(llm, prompt, 24), modernlm.generate(ours, prompt, 24, temperature=0.0)[0]
    first = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b), None)
    if first is not None:
        with torch.no_grad():
            logits = ours(torch.tensor([prompt + mine[:first]]))[0, -1]
        assert float(logits[mine[first]] - logits[theirs[first]]) < 0.1, (first, mine, theirs)
