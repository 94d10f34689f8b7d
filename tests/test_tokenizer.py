"""The tokenizer against transformers: ids of the embedded GGUF's vocabulary, chat templates, save -> AutoTokenizer,
the pre-tokenizers of other GGUF vocabularies (a small BPE trained here), and the errors."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from modernlm.checkpoints.gguf import tokenizer_from_gguf
from modernlm.tokenizer import Tokenizer, TokenizerError, bytes_to_unicode

TEXTS = {
    "ascii": "Hello world! The quick brown fox jumps over the lazy dog.",
    "digits": "In 2024, 1234567 people paid $3.14159 each (about 12,345.67 total).",
    "whitespace": "  leading spaces,   runs\t\ttabs\n\n\nnewlines \r\n trailing  ",
    "non-ascii": "naïve café, Straße, 日本語のテキスト, Ελληνικά, 😀🚀👍🏽 and ﷽",
    "code": 'def f(x: int) -> int:\n    """Square."""\n    return x ** 2  # done\n\nprint(f(3))\n',
    "contractions": "I'm sure you're right, they'll say it's what we'd've done",
    "special": "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><repo_name>x<file_sep>",
    "empty": "",
}

CHATS = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And in French? Réponds en un mot 😀"},
    ],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
}


@pytest.fixture(scope="module")
def ours(smollm2_gguf) -> Tokenizer:
    return tokenizer_from_gguf(smollm2_gguf)


# ---- the embedded GGUF's vocabulary against transformers ---------------------------------------------------------
@pytest.mark.parametrize("name", list(TEXTS))
def test_ids_match_transformers(ours, hf_smollm2_tokenizer, name):
    text = TEXTS[name]
    assert ours.encode(text) == hf_smollm2_tokenizer.encode(text, add_special_tokens=False)


def test_special_tokens_are_single_ids(ours):
    assert ours.encode("<|im_start|>user<|im_end|>") == [1, ours.encode("user")[0], 2]


@pytest.mark.parametrize("name", list(TEXTS))
def test_decode_round_trip(ours, hf_smollm2_tokenizer, name):
    ids = ours.encode(TEXTS[name])
    assert ours.decode(ids) == TEXTS[name]
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == hf_smollm2_tokenizer.decode(ids, skip_special_tokens=skip)


def test_special_ids_and_size_match_transformers(ours, hf_smollm2_tokenizer):
    hf = hf_smollm2_tokenizer
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
    )
    assert ours.vocab_size == len(hf) == 49152


@pytest.mark.parametrize("generation_prompt", [True, False], ids=["gen", "no-gen"])
@pytest.mark.parametrize("chat", list(CHATS))
def test_chat_template_matches_transformers(ours, hf_smollm2_tokenizer, chat, generation_prompt):
    messages = CHATS[chat]
    text = ours.apply_chat_template(messages, add_generation_prompt=generation_prompt)
    expected = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert text == expected
    expected_ids = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    assert ours.encode(text) == list(expected_ids)


def test_save_loads_in_transformers(ours, tmp_path):
    from transformers import AutoTokenizer

    ours.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS.values():
        assert hf.encode(text, add_special_tokens=False) == ours.encode(text)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (
        ours.bos_token_id,
        ours.eos_token_id,
        ours.pad_token_id,
    )
    messages = CHATS["multi-turn"]
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == ours.apply_chat_template(
        messages
    )
    again = Tokenizer.from_directory(tmp_path)  # and back in through our directory reader
    assert [again.encode(t) for t in TEXTS.values()] == [ours.encode(t) for t in TEXTS.values()]
    assert again.chat_template == ours.chat_template and again.eos_token_id == ours.eos_token_id


def test_directory_chat_template_file_wins(ours, tmp_path):
    ours.save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    assert Tokenizer.from_directory(tmp_path).apply_chat_template(CHATS["user"]) == "[user] What is 2+2?\n"


def test_template_helpers(ours):
    """tojson (no HTML escaping), raise_exception, bos/eos tokens: what HF chat templates rely on."""
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be the user') }}{% endif %}"
        "{{ bos_token }}{{ messages | tojson }}{{ eos_token }}"
    )
    tok = Tokenizer(ours.backend, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=template)
    assert tok.apply_chat_template([{"role": "user", "content": "<b>é</b>"}]) == (
        '<|im_start|>[{"role": "user", "content": "<b>é</b>"}]<|im_end|>'
    )
    with pytest.raises(TokenizerError, match="first message must be the user"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_template_sandbox(ours):
    tok = Tokenizer(ours.backend, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|not safely|access to attribute"):
        tok.apply_chat_template(CHATS["user"])


# ---- other GGUF pre-tokenizers, on a small byte-level BPE trained here ------------------------------------------
CORPUS = [
    "In 2023 and 2024 we counted 1234567 apples, 89012 pears and 345 plums at 12:30.",
    "It's what they'll do; we've said we'd do it, and I'm sure you're right.",
    "  indented   text\twith\ttabs\n\nand newlines, 3.14159 and 2.71828 again 2024",
] * 20


@pytest.fixture(scope="module")
def small_vocab() -> tuple[list[str], list[str]]:
    """(tokens, merges) of a 400-token byte-level BPE, with digit merges so the digit rules of the regexes matter."""
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>"],
    )
    backend.train_from_iterator(CORPUS, trainer)
    model = json.loads(backend.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt2"])
def test_gguf_pre_tokenizers_match_transformers(tmp_path, write_gguf, small_vocab, pre):
    from transformers import AutoTokenizer

    tokens, merges = small_vocab
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3, 3] + [1] * (len(tokens) - 2),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 0,
    }
    path = write_gguf(tmp_path / f"{pre}.gguf", "llama", metadata)
    ours = tokenizer_from_gguf(path)
    hf = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in [*TEXTS.values(), *CORPUS[:3], "<|im_start|>12345678 it's<|endoftext|>"]:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text
    assert (ours.bos_token_id, ours.eos_token_id) == (1, 0)


def test_bytes_to_unicode_is_gpt2s():
    table = bytes_to_unicode()
    assert len(table) == len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā"


# ---- errors -------------------------------------------------------------------------------------------------------
def test_directory_without_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="has no tokenizer.json"):
        Tokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match="SentencePiece tokenizer.model, which is not supported yet"):
        Tokenizer.from_directory(tmp_path)


def test_missing_chat_template(ours):
    tok = Tokenizer(ours.backend, eos_token="<|endoftext|>", source="base-model")
    with pytest.raises(TokenizerError, match="base-model has no chat template"):
        tok.apply_chat_template(CHATS["user"])


def test_special_token_not_in_vocabulary(ours):
    with pytest.raises(TokenizerError, match="eos_token '</s>' is not in the vocabulary"):
        Tokenizer(ours.backend, eos_token="</s>")


@pytest.mark.parametrize("add_bos", [True, False, None])
def test_prompts_start_with_bos_as_the_checkpoint_says(tmp_path, write_gguf, small_vocab, add_bos):
    """`tokenizer.ggml.add_bos_token` (GGUF), `add_bos_token` or the tokenizer.json post-processor (directories):
    prompt ids equal transformers' `tokenizer(text).input_ids` for the GGUF, the directory transformers saves from it,
    and the directory we save."""
    from transformers import AutoTokenizer

    from modernlm.generation.inputs import encode_prompt

    tokens, merges = small_vocab
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3, 3] + [1] * (len(tokens) - 2),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 0,
    }
    if add_bos is not None:
        metadata["tokenizer.ggml.add_bos_token"] = add_bos
    path = write_gguf(tmp_path / "m.gguf", "llama", metadata)
    hf = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    hf.save_pretrained(tmp_path / "hf_saved")
    ours = tokenizer_from_gguf(path)
    ours.save(tmp_path / "ours_saved")
    text = CORPUS[0]
    expected = hf(text).input_ids
    assert (expected[:1] == [1]) == bool(add_bos)
    assert encode_prompt(ours, text) == expected
    assert encode_prompt(Tokenizer.from_directory(tmp_path / "hf_saved"), text) == expected
    assert encode_prompt(Tokenizer.from_directory(tmp_path / "ours_saved"), text) == expected
    assert AutoTokenizer.from_pretrained(tmp_path / "ours_saved")(text).input_ids == expected
    assert encode_prompt(ours, "<|im_start|>" + text)[:2] != [1, 1]  # never a second BOS
    messages = [{"role": "user", "content": text}]
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    ours.chat_template = hf.chat_template = template  # a template without BOS: the chat prompt gets none
    rendered = ours.apply_chat_template(messages, add_generation_prompt=False)
    chat_ids = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert encode_prompt(ours, rendered, chat=True) == chat_ids
