"""SentencePiece vocabularies of GGUF files (`tokenizer.ggml.model == "llama"`) against transformers' own GGUF loading:
a small vocabulary trained here and written in the two layouts llama.cpp writes (Llama 2's: a prefix space, <unk>
typed unknown, no merges; Gemma's: no prefix space, newlines and runs of spaces as user-defined pieces with placeholder
scores), its cached conversion, and the embedded Gemma 3 270M's vocabulary (slow: both sides parse 262k pieces)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers, trainers

import modernlm
from modernlm.checkpoints import gguf_cache
from modernlm.checkpoints.gguf import tokenizer_from_gguf
from modernlm.generation.inputs import encode_prompt
from modernlm.tokenizer import TokenizerError
from modernlm.tokenizer_spm import derived_merges
from test_gguf import tiny_metadata, tiny_weights, write_tiny

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "In 2024 we counted 1234567 apples and 89012 pears; it's what they'll do.",
    "indented text with runs of spaces and newlines, café naïve Straße",
    "the theory of the thing: then there, these three thermometers thought thoroughly",
] * 20
TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces  ",
    "a  b   c    d     e      f",  # runs of spaces: Gemma's user-defined pieces must merge before "▁b"
    " ",
    "\n",
    "a\n\nb\n\n\n c\r\n",
    "In 2024, 1234567 people paid $3.14159 each",
    "naïve café, Straße, 日本語のテキスト, Ελληνικά, 😀🚀👍🏽 and ﷽ \x00",  # byte fallback
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<s>the</s><unk><bos><eos><pad> <0x41> [multimodal] <think>",
    "def f(x):\n\treturn x ** 2  # done\n\t\t\n",
    "▁ ▁▁ x▁y",
    "",
]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
# (token, GGUF type) before the byte pieces and after the learned ones; 1 normal, 2 unknown, 3 control,
# 4 user-defined, 6 byte
LAYOUTS = {
    "llama": (
        [("<unk>", 2), ("<s>", 3), ("</s>", 3)],
        [("<think>", 4)],
        {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0},  # no add_space_prefix, add_bos_token: defaults
    ),
    "gemma3": (
        [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 3), ("<mask>", 3), ("<start_of_turn>", 3),
         ("<end_of_turn>", 3), ("[multimodal]", 4), ("\n", 4), ("\n\n", 4), ("  ", 4), ("   ", 4), ("    ", 4)],
        [("\t", 4), ("\t\t", 4), ("<start_of_image>", 3)],
        {"bos_token_id": 2, "eos_token_id": 1, "unknown_token_id": 3, "padding_token_id": 0,
         "add_space_prefix": False, "add_bos_token": True},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def learned() -> list[str]:
    """~200 pieces of a SentencePiece-style BPE ("▁" for spaces) trained here, in merge order."""
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300))
    vocab = json.loads(backend.to_str())["model"]["vocab"]
    return [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]


def spm_metadata(learned: list[str], layout: str) -> dict:
    """A GGUF SentencePiece vocabulary as llama.cpp writes it: scores -n for the n-th learned piece, 0 for bytes, and
    placeholders for the others (0 in Llama 2's layout, -1000 in Gemma's)."""
    head, tail, extra = LAYOUTS[layout]
    placeholder = 0.0 if layout == "llama" else -1000.0
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [t for t, _ in head] + BYTES + learned + [t for t, _ in tail],
        "tokenizer.ggml.scores": [placeholder] * len(head) + [0.0] * 256 + [-float(n) for n in range(len(learned))]
        + [-1000.0] * len(tail),
        "tokenizer.ggml.token_type": [k for _, k in head] + [6] * 256 + [1] * len(learned) + [k for _, k in tail],
        **{f"tokenizer.ggml.{key}": value for key, value in extra.items()},
    }


def both(tmp_path, write_gguf, metadata: dict, arch: str):
    """(ours, transformers') tokenizers of one GGUF file holding `metadata`."""
    from transformers import AutoTokenizer

    path = write_gguf(tmp_path / f"{arch}.gguf", arch, metadata)
    return tokenizer_from_gguf(path), AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ids_and_text_match_transformers(tmp_path, write_gguf, learned, layout):
    ours, hf = both(tmp_path, write_gguf, spm_metadata(learned, layout), layout)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text
        if not text.startswith(hf.bos_token):  # (where transformers puts a second BOS, encode_prompt does not)
            assert encode_prompt(ours, text) == hf(text).input_ids, text  # BOS first, as both files say
    assert ours.decode(ours.encode(TEXTS[8])) == TEXTS[8]  # bytes fall back and come back
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (hf.bos_token_id, hf.eos_token_id,
                                                                         hf.pad_token_id)  # fmt: skip
    assert ours.add_bos_token and ours.vocab_size == len(hf)


def test_prefix_space_only_where_the_file_says(tmp_path, write_gguf, learned):
    llama = tokenizer_from_gguf(write_gguf(tmp_path / "l.gguf", "llama", spm_metadata(learned, "llama")))
    gemma = tokenizer_from_gguf(write_gguf(tmp_path / "g.gguf", "gemma3", spm_metadata(learned, "gemma3")))
    assert llama.encode("the") == [llama.token_to_id("▁the")] and llama.decode(llama.encode("the")) == "the"
    assert gemma.encode("the") == [gemma.token_to_id("the")] and gemma.encode(" the") == [gemma.token_to_id("▁the")]
    assert gemma.encode("<start_of_turn>\n\n") == [5, 9]  # a control piece, and a user-defined one, whole


def test_merges_from_the_file_are_used(tmp_path, write_gguf, learned):
    metadata = spm_metadata(learned, "gemma3")
    pieces = [("▁" * len(t) if not t.strip(" ") else t) for t in metadata["tokenizer.ggml.tokens"]]
    merges = derived_merges(pieces, metadata["tokenizer.ggml.scores"], metadata["tokenizer.ggml.token_type"])
    short = [f"{a} {b}" for a, b in reversed(merges) if len(a + b) <= 3]  # no piece longer than 3, the worst first
    metadata["tokenizer.ggml.merges"] = short
    ours, hf = both(tmp_path, write_gguf, metadata, "gemma3")
    derived = tokenizer_from_gguf(write_gguf(tmp_path / "d.gguf", "gemma3", spm_metadata(learned, "gemma3")))
    for text in TEXTS:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
    assert ours.encode(TEXTS[0]) != derived.encode(TEXTS[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "bert"}, r"'bert' is not supported.*WordPiece \('bert'\) or Unigram \('t5'\)"),
        ({"tokenizer.ggml.model": "t5"}, r"'t5' is not supported"),
        ({"tokenizer.ggml.scores": None}, "no tokenizer.ggml.scores"),
        ({"tokenizer.ggml.scores": [0.0, -1.0]}, r"tokens but 2 scores; the vocabulary is corrupt"),
        ({"tokenizer.ggml.merges": ["a b c"]}, r"merges must be 'left right' pairs"),
    ],
)
def test_other_vocabularies_and_broken_ones_are_refused(tmp_path, write_gguf, learned, change, message):
    metadata = {k: v for k, v in (spm_metadata(learned, "llama") | change).items() if v is not None}
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_gguf(write_gguf(tmp_path / "x.gguf", "llama", metadata))


def test_converted_once_and_read_back(tmp_path, write_gguf, learned, monkeypatch):
    """The GGUF cache stores the SentencePiece tokenizer as tokenizer.json, which reads back with the same ids (and
    loads in transformers); a chat template beside the file is added on load, never cached."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("MODERNLM_CACHE", str(tmp_path / "cache"))
    metadata = tiny_metadata("llama") | spm_metadata(learned, "gemma3")
    path = write_tiny(write_gguf, tmp_path / "tiny.gguf", "llama", tiny_weights(seed=1), Q.Q8_0, metadata)
    direct = tokenizer_from_gguf(path)
    first = modernlm.load(path)[1]  # converts
    entry = gguf_cache.entry_dir(path)
    assert json.loads((entry / gguf_cache.DONE).read_text())["tokenizer"] == "tokenizer.json"
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}<start_of_turn>{{ m.content }}{% endfor %}")
    cached = modernlm.load_tokenizer(path)  # reads the converted copy
    hf = AutoTokenizer.from_pretrained(entry)
    for text in TEXTS:
        expected = direct.encode(text)
        assert first.encode(text) == cached.encode(text) == expected == hf.encode(text, add_special_tokens=False)
        assert cached.decode(expected) == direct.decode(expected)
        assert encode_prompt(cached, text) == hf(text).input_ids == encode_prompt(direct, text)
    assert first.chat_template is None  # loaded before the template was there, and the cache never stored it:
    assert "chat_template" not in json.loads((entry / "tokenizer_config.json").read_text())
    assert cached.apply_chat_template([{"role": "user", "content": "hi"}]) == "<start_of_turn>hi"


def test_the_embedded_gemma_template_is_googles():
    """Gemma 3 270M's GGUF carries no chat template: the one shipped for it is Google's Gemma 3 template, byte for
    byte as trl keeps it (trl/chat_templates/gemma3.jinja, checked against google/gemma-3-* weekly)."""
    from modernlm.checkpoints import sources

    shipped = Path(sources.__file__).parent / "templates" / sources.CHAT_TEMPLATES["gemma-3-270m"]
    trl = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates" / "gemma3.jinja"
    assert shipped.read_text(encoding="utf-8") == trl.read_text(encoding="utf-8")


# ---- the embedded Gemma 3 270M's vocabulary (262,144 pieces, no merges) ------------------------------------------
GEMMA_TEXTS = [*TEXTS, "Ceci n'est pas une pipe.\r\n\r\nÀ bientôt !", "<table><tr><td>1</td></tr></table>", "x" * 300]
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan? 日本 😀"},
]


@pytest.fixture(scope="module")
def gemma_tokenizers():
    """(ours, transformers') tokenizers of the embedded Gemma 3 270M GGUF; no weights are read."""
    from transformers import AutoTokenizer

    from modernlm.checkpoints.gguf import chat_template_beside
    from modernlm.checkpoints.sources import resolve

    path = resolve("gemma-3-270m")
    ours = tokenizer_from_gguf(path)
    ours.chat_template = chat_template_beside(path)  # as modernlm.load_tokenizer adds it
    return ours, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_gemma_270m_ids_match_transformers(gemma_tokenizers):
    ours, hf = gemma_tokenizers
    assert hf.chat_template is None and ours.chat_template  # the file has none; the embedded model brings it
    for text in GEMMA_TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == hf.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), text
        assert encode_prompt(ours, text) == hf(text).input_ids, text
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (2, 1, 0) and ours.add_bos_token
    assert ours.vocab_size == len(hf) == 262144


@pytest.mark.slow
@pytest.mark.parametrize("generation_prompt", [True, False], ids=["gen", "no-gen"])
def test_gemma_270m_chat_template_matches_transformers(gemma_tokenizers, generation_prompt):
    ours, hf = gemma_tokenizers
    hf.chat_template = ours.chat_template
    text = ours.apply_chat_template(CONVERSATION, add_generation_prompt=generation_prompt)
    assert text == hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=generation_prompt)
    assert text.startswith("<bos><start_of_turn>user\nAnswer in one word.\n\nWhat is the capital")
    expected = hf.apply_chat_template(
        CONVERSATION, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )["input_ids"]
    assert encode_prompt(ours, text, chat=True) == list(expected)  # one BOS, the template's
