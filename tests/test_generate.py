"""The decode loop: greedy and beam search against transformers' `generate`, the cached fast path against the naive
full recompute, batching against each prompt alone, streaming text, stop strings, prefix reuse, bad input."""

from __future__ import annotations

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import modernlm
from modernlm.generation import IncrementalDecoder, Session, generate, generate_naive, stream_generate

# ---- fixtures: random-initialised HF models, saved and loaded through modernlm's loader ------------------------------
LLAMA = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.1,  # sharper than the default 0.02, so greedy choices are rarely near ties
)


@pytest.fixture(scope="module")
def make_pair(hf_reference):
    """make_pair(directory, seed=0, **fields) -> (transformers model, our model) with the same random weights."""

    def build(directory, seed=0, **fields):
        config = transformers.LlamaConfig(**{**LLAMA, **fields})
        hf, _ = hf_reference(transformers.LlamaForCausalLM, config, directory, seed=seed, attn="eager")
        return hf, modernlm.load_model(directory)

    return build


@pytest.fixture(scope="module")
def pair(tmp_path_factory, make_pair):
    return make_pair(tmp_path_factory.mktemp("gqa"), seed=0)


@pytest.fixture(scope="module")
def model(pair):
    return pair[1]


class ByteBPE:
    """A tiny byte-level BPE tokenizer whose tokens often hold part of a multi-byte character."""

    TEXT = "Héllo wörld, ça va? Ünïcode: 日本語のテキスト, 中文字符, Ελληνικά, русский язык, emoji 🙂🚀🎉 and more. "

    def __init__(self) -> None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator([self.TEXT] * 10, trainer)
        self.tok, self.vocab_size = tok, tok.get_vocab_size()
        self.eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


@pytest.fixture(scope="module")
def tokenizer():
    return ByteBPE()


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tokenizer, make_pair):
    return make_pair(tmp_path_factory.mktemp("bytes"), seed=3, vocab_size=tokenizer.vocab_size)[1]


def prompts(lengths, vocab=320, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_new_tokens(hf, rows, **kwargs):
    """transformers' generate on left-padded rows; the new tokens of each row, without trailing padding."""
    P = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, pad_token_id=0, **kwargs)
    return [row[P:].tolist() for row in out]


# ---- parity with transformers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [{}, dict(num_key_value_heads=4, tie_word_embeddings=True, rope_theta=100000.0)])
def test_greedy_matches_transformers(tmp_path, fields, make_pair):
    hf, ours = make_pair(tmp_path, seed=1, **fields)
    rows = prompts([7, 12])
    expected = hf_new_tokens(hf, rows, max_new_tokens=40, do_sample=False, eos_token_id=None)
    assert generate(ours, rows, 40) == expected
    assert all(len(r) == 40 for r in expected)


def test_greedy_with_eos_and_repetition_penalty_matches_transformers(pair):
    hf, ours = pair
    rows = prompts([9])
    free = generate(ours, rows, 40)[0]
    eos = free[20]  # a token the free run produces, so the sequence ends early
    expected = hf_new_tokens(hf, rows, max_new_tokens=40, do_sample=False, eos_token_id=eos)
    got = generate(ours, rows, 40, eos_token_id=eos)
    assert got == expected and got[0][-1] == eos and len(got[0]) <= 21
    expected = hf_new_tokens(hf, rows, max_new_tokens=32, do_sample=False, repetition_penalty=1.5, eos_token_id=None)
    assert generate(ours, rows, 32, repetition_penalty=1.5) == expected


@pytest.fixture(scope="module")
def beam_pair(tmp_path_factory, make_pair):
    """A tiny vocabulary with large weights: EOS (id 2) is often among the candidates, so length penalty matters."""
    return make_pair(
        tmp_path_factory.mktemp("beam"),
        seed=1,
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        initializer_range=0.2,
        max_position_embeddings=64,
    )


@pytest.mark.parametrize("length_penalty", [-1.0, 1.0, 3.0])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beam_search_matches_transformers(beam_pair, length_penalty, early_stopping):
    hf, ours = beam_pair
    rows = prompts([6, 6], vocab=16, seed=0)
    kw = dict(num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping, max_new_tokens=10)
    expected = hf_new_tokens(hf, rows, do_sample=False, eos_token_id=2, **kw)
    expected = [r[: r.index(2) + 1] if 2 in r else r for r in expected]  # drop the padding after EOS
    got = generate(ours, rows, kw.pop("max_new_tokens"), eos_token_id=2, **kw)
    assert got == expected


def test_length_penalty_changes_the_beam(beam_pair):
    """The fixture model is one where it matters: short hypotheses win at length_penalty -1, long ones at 3."""
    _, ours = beam_pair
    rows = prompts([6, 6], vocab=16, seed=0)
    short = generate(ours, rows, 10, num_beams=3, length_penalty=-1.0, eos_token_id=2)
    long = generate(ours, rows, 10, num_beams=3, length_penalty=3.0, eos_token_id=2)
    assert len(short[1]) < len(long[1])


def test_beam_search_left_padding_and_penalty_match_transformers(beam_pair):
    hf, ours = beam_pair
    rows = prompts([4, 9], vocab=16, seed=5)
    kw = dict(num_beams=3, length_penalty=1.0, repetition_penalty=1.3)
    expected = hf_new_tokens(hf, rows, do_sample=False, eos_token_id=2, max_new_tokens=10, **kw)
    expected = [r[: r.index(2) + 1] if 2 in r else r for r in expected]
    assert generate(ours, rows, 10, eos_token_id=2, **kw) == expected


def test_one_beam_is_greedy(model):
    rows = prompts([8])
    assert generate(model, rows, 16, num_beams=1) == generate(model, rows, 16)


# ---- the fast path against the reference and against itself --------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{}, dict(repetition_penalty=1.4), dict(temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, seed=7)],
    ids=["greedy", "penalty", "sampled"],
)
def test_cached_equals_naive(model, options):
    rows = prompts([5, 11])
    assert generate(model, rows[:1], 32, **options) == generate_naive(model, rows[:1], 32, **options)
    if "seed" not in options:  # a batch draws its random numbers together; greedy is per row
        assert generate(model, rows, 32, **options) == generate_naive(model, rows, 32, **options)


@pytest.mark.parametrize("options", [{}, dict(repetition_penalty=1.3)])
def test_batched_equals_alone(model, options):
    rows = prompts([3, 17, 9, 1])
    batched = generate(model, rows, 32, **options)
    assert batched == [generate(model, [r], 32, **options)[0] for r in rows]


def test_batched_rows_end_separately(model):
    rows = prompts([4, 10])
    free = generate(model, rows, 24)
    eos = free[0][5]
    got = generate(model, rows, 24, eos_token_id=[eos, 80])
    for r, (g, f) in enumerate(zip(got, free, strict=True)):
        stop = next((i for i, t in enumerate(f) if t in (eos, 80)), None)
        assert g == (f if stop is None else f[: stop + 1]), r
    assert got[0][-1] == eos


def test_tensor_input_with_left_padding_mask(model):
    rows = prompts([4, 7])
    ids = torch.tensor([[0, 0, 0] + rows[0], rows[1]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    assert generate(model, ids, 12, attention_mask=mask) == generate(model, rows, 12)
    assert generate(model, torch.tensor(rows[1]), 12) == generate(model, [rows[1]], 12)
    with pytest.raises(ValueError, match="only left padding"):
        generate(model, ids, 4, attention_mask=mask.flip(-1))


def test_seeded_sampling_is_reproducible(model):
    rows = prompts([6, 6])
    kw = dict(temperature=1.0, top_p=0.95, seed=123)
    a, b = generate(model, rows, 24, **kw), generate(model, rows, 24, **kw)
    assert a == b
    assert generate(model, rows, 24, **{**kw, "seed": 124}) != a
    assert a != generate(model, rows, 24)  # not greedy


def test_context_limit_truncates_generation(model):
    limit = model.config.max_seq_len
    rows = prompts([limit - 5])
    assert len(generate(model, rows, 20)[0]) == 6  # the last token comes from position limit - 1
    assert len(generate(model, prompts([limit]), 20)[0]) == 1


# ---- text: streaming and stop strings -------------------------------------------------------------------------------
def test_incremental_decoder_never_splits_a_character(tokenizer):
    text = "日本語 🙂 héllo, Ελληνικά 🚀🎉!"
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)  # the tokenizer does split characters
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_joined_equals_decoded_ids(text_model, tokenizer):
    prompt = "Ünïcode: 日本語"
    ids = generate(text_model, tokenizer.encode(prompt), 48)[0]
    pieces = list(stream_generate(text_model, tokenizer, prompt, 48))
    assert "".join(pieces) == tokenizer.decode(ids)
    assert len(pieces) > 5


def test_stream_hides_eos_and_stops_there(text_model, tokenizer):
    prompt = tokenizer.encode("emoji 🙂")
    free = generate(text_model, prompt, 30)[0]
    eos = free[12]
    ids = generate(text_model, prompt, 30, eos_token_id=eos)[0]
    assert ids[-1] == eos
    text = "".join(stream_generate(text_model, tokenizer, prompt, 30, eos_token_id=eos))
    assert text == tokenizer.decode(ids[:-1])


def test_stop_strings(text_model, tokenizer):
    prompt = tokenizer.encode("Héllo")
    free = generate(text_model, prompt, 40)[0]
    text = tokenizer.decode(free)
    start = next(i for i in range(10, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]
    got = generate(text_model, prompt, 40, stop_strings=["never-there", stop], tokenizer=tokenizer)[0]
    assert got == free[: len(got)] and len(got) < len(free)
    assert stop in tokenizer.decode(got) and stop not in tokenizer.decode(got[:-1])


# ---- prefix reuse ---------------------------------------------------------------------------------------------------
def test_session_prefix_reuse_equals_fresh_generation(model):
    session = Session(model, grow=16)  # small steps, so the cache grows (and is copied) between turns
    first = prompts([10])[0]
    reply = session.generate(first, 12)
    assert reply == generate(model, [first], 12)[0]
    assert session.stats.reused_tokens == 0 and session.stats.new_tokens == 12

    second = first + reply + prompts([6], seed=1)[0]  # the next chat turn: history, reply, new message
    reply2 = session.generate(second, 12)
    assert reply2 == generate(model, [second], 12)[0]
    assert session.stats.reused_tokens == len(first) + len(reply) - 1  # the last reply token was never fed

    edited = second[:5] + [7] + second[6:]  # an edit early in the history: only its prefix is reused
    assert (
        session.generate(edited, 12, repetition_penalty=1.2) == generate(model, [edited], 12, repetition_penalty=1.2)[0]
    )
    assert session.stats.reused_tokens == 5

    assert session.generate(edited, 12) == generate(model, [edited], 12)[0]  # the same prompt again
    assert session.stats.reused_tokens == len(edited) - 1
    session.reset()
    assert session.generate(first, 12) == reply and session.stats.reused_tokens == 0


def test_session_stream_and_interrupted_turn(text_model, tokenizer):
    session = Session(text_model, tokenizer=tokenizer)
    prompt = tokenizer.encode("Ünïcode")
    pieces = session.stream(prompt, 20)
    next(pieces)
    pieces.close()  # the reader stopped early: the cache must still describe only what was fed
    assert len(session.cached) <= len(prompt) + 20
    assert session.generate(prompt + [5, 6], 10) == generate(text_model, prompt + [5, 6], 10)[0]


# ---- bad input ------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_forward(model):
    """Fails the test if the model runs: errors must come before any work."""

    def hook(*_):
        raise AssertionError("the model ran before the input was checked")

    handle = model.register_forward_pre_hook(hook)
    yield model
    handle.remove()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([], 4), {}, "empty"),
        (([[1, 2], []], 4), {}, "prompt 1 is empty"),
        ((torch.zeros(1, 0, dtype=torch.long), 4), {}, "empty"),
        (([[1] * 129], 4), {}, "more than the model's context of 128"),
        (([[1, 2]], 4), dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (([[1, 2]], 4), dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
        (([[1, 2]], 4), dict(temperature=-0.5), "temperature must be a number >= 0"),
        (([[1, 2]], 0), {}, "max_new_tokens must be an integer >= 1"),
        (([[1, 2]], 4), dict(stop_strings=["ok", ""]), "non-empty"),
        (([[1, 2]], 4), dict(stop_strings="\n"), "need a tokenizer"),
        (([[1, 2]], 4), dict(top_k=0), "top_k must be a positive integer"),
        (([[1, 2]], 4), dict(min_p=1.5), "min_p must be in"),
        (([[1, 2]], 4), dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (([[1, 2]], 4), dict(num_beams=0), "num_beams must be"),
        (([[1, 2]], 4), dict(num_beams=2, temperature=0.7), "beam search is deterministic"),
        (([[1, 2]], 4), dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be"),
        (([[1, 2]], 4), dict(seed="x", temperature=1.0), "seed must be an integer"),
    ],
)
def test_bad_input_raises_before_work(no_forward, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(no_forward, *args, **kwargs)


def test_bad_input_in_session_and_stream(no_forward, tokenizer):
    with pytest.raises(ValueError, match="the prompt is empty"):
        list(stream_generate(no_forward, tokenizer, "", 4))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        list(Session(no_forward).stream([1, 2], 4))
    with pytest.raises(ValueError, match="one conversation"):
        Session(no_forward).generate([[1, 2], [3]], 4)
    with pytest.raises(ValueError, match="top_p"):
        Session(no_forward).generate([1, 2], 4, top_p=2)
