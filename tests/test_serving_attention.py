"""`"return_attentions"` on /v1/chat/completions: each generated token's attention row (the step that chose it) for
the chosen layers and heads, equal to the model's own output_attentions over the prompt and the reply; the reply is
unchanged by asking; float and uint8 encodings; bad values are 400s naming the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from test_api import CHAT, assert_error, chat_dir, chat_ids, expected, start  # noqa: F401  (chat_dir is a fixture)

httpx = pytest.importorskip("httpx")

MESSAGES = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def server(chat_dir):  # noqa: F811
    live, engine, model, tokenizer = start(chat_dir)
    yield live, engine, model, tokenizer
    live.stop()
    engine.stop()


def ask(server, **fields) -> httpx.Response:
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(server[0].url + CHAT, json=body, timeout=60)


def reference(model, prompt: list[int], generated: list[int]) -> torch.Tensor:  # (L, H, T, T)
    with torch.no_grad():
        out = model(torch.tensor([prompt + generated[:-1]]), output_attentions=True)
    return torch.stack([a[0] for a in out.attentions])


def test_every_layer_and_head_of_each_reply_token(server):
    _, _, model, tokenizer = server
    plain = ask(server).json()
    r = ask(server, return_attentions=True)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"] == plain["choices"][0]["message"]  # asking changes nothing in the reply
    att = choice["attentions"]
    prompt = chat_ids(tokenizer, MESSAGES)
    P, N = len(prompt), r.json()["usage"]["completion_tokens"]
    L, H = model.config.n_layers, model.config.n_heads
    assert (att["layers"], att["heads"], att["prompt_tokens"], att["encoding"]) == (list(range(L)), [0, 1], P, "float")
    assert len(att["rows"]) == N and len(att["tokens"]) == P + N
    _, generated = expected(model, tokenizer, prompt, 8)  # the same greedy reply's ids
    assert att["tokens"] == [tokenizer.decode([t]) for t in prompt + generated]
    want = reference(model, prompt, generated)
    for j, row in enumerate(att["rows"]):
        row = torch.tensor(row)  # (L, H, P + j)
        assert row.shape == (L, H, P + j)
        torch.testing.assert_close(row, want[:, :, P - 1 + j, : P + j], atol=5e-4, rtol=0)  # rounded to 3 decimals


def test_one_head_in_uint8_and_every_choice(server):
    _, _, model, tokenizer = server
    spec = {"layer": 1, "head": [1], "encoding": "uint8"}
    r = ask(server, return_attentions=spec, n=2)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 2 and all(c["attentions"]["layers"] == [1] for c in choices)
    att = choices[0]["attentions"]
    full = ask(server, return_attentions=True).json()["choices"][0]["attentions"]
    P = att["prompt_tokens"]
    for j, (packed, floats) in enumerate(zip(att["rows"], full["rows"], strict=True)):
        row = np.frombuffer(base64.b64decode(packed), dtype=np.uint8).reshape(1, 1, P + j) / 255
        np.testing.assert_allclose(row[0, 0], np.asarray(floats)[1, 1], atol=1 / 255 + 1e-3)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(return_attentions=True, stream=True), "set 'stream' to false"),
        (dict(return_attentions={"layer": 2}), "integers in 0..1"),
        (dict(return_attentions={"head": [0, -1]}), "integers in 0..1"),
        (dict(return_attentions={"layers": 0}), "no field 'layers'"),
        (dict(return_attentions={"encoding": "png"}), "float, uint8"),
        (dict(return_attentions="yes"), "true or an object"),
    ],
)
def test_bad_values_are_400s_naming_the_field(server, fields, message):
    err = assert_error(ask(server, **fields), 400, "return_attentions")
    assert message in err["message"]
    assert ask(server, return_attentions=False).json()["choices"][0].get("attentions") is None
