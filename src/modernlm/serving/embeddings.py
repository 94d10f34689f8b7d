"""POST /v1/embeddings in OpenAI's shape, over an encoder's sentence embeddings (modernlm.embedding: mean pooling,
L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 computes them).

Request: {"model", "input": a string or a list of strings, "encoding_format": "float" (default) or "base64" (the
little-endian float32 bytes, what the `openai` client asks for), "dimensions" (only the model's own), "user"}.
Response: {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage":
{"prompt_tokens", "total_tokens"}}. Token-id inputs are refused (send the text: the ids of another tokenizer would
mean nothing to this one). `modernlm serve --embedding-model all-minilm-l6-v2` serves one beside the chat model.
"""

from __future__ import annotations

import base64
import threading
import time

import numpy as np

from ..embedding import batch_encode, embed, require_encoder
from .params import APIError, bad, check_fields, unicode

FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request


class Embedder:
    """An encoder and its tokenizer behind /v1/embeddings; one request embeds at a time (a lock), off the event
    loop (the caller runs `__call__` in a worker thread)."""

    def __init__(self, model, tokenizer, model_id: str, max_len: int = 256) -> None:
        require_encoder(model, "/v1/embeddings")
        self.model, self.tokenizer, self.model_id = model.eval(), tokenizer, model_id
        self.max_len = min(max_len, model.config.max_seq_len)
        self.dim = model.config.d_model
        self.created = int(time.time())
        self.lock = threading.Lock()

    def card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "modernlm"}

    def __call__(self, body) -> dict:
        """The response to a checked request body (APIError on a bad one)."""
        body = check_fields(body, FIELDS)
        if body.get("model") not in (None, self.model_id):
            raise APIError(404, f"the embedding model {body['model']!r} does not exist; this server's is "
                           f"{self.model_id!r}", "not_found_error", "model", "model_not_found")  # fmt: skip
        texts, encoding = inputs(body), body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad("encoding_format", f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
        dims = body.get("dimensions")
        if dims is not None and dims != self.dim:
            raise bad("dimensions", f"this model's embeddings have {self.dim} dimensions; 'dimensions' cannot change")
        with self.lock:
            vectors = embed(self.model, self.tokenizer, texts, max_len=self.max_len)  # (N, D)
            tokens = int(batch_encode(self.tokenizer, texts, self.max_len)[1].sum())
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": self.model_id, "usage": usage}


def inputs(body: dict) -> list[str]:
    value = body.get("input")
    if value is None:
        raise bad("input", "'input' is required")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad("input", "'input' must be a string or a non-empty list of strings (token ids are not supported)")
    if len(texts) > MAX_INPUTS:
        raise bad("input", f"'input' holds {len(texts)} texts; at most {MAX_INPUTS} per request")
    if any(not t for t in texts):
        raise bad("input", "'input' strings must not be empty")
    return [unicode(t, "input") for t in texts]


def _encoded(vector, encoding: str):
    if encoding == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector.numpy().astype(np.float32)]


def no_embedder() -> APIError:
    return APIError(404, "this server serves no embedding model: start it with --embedding-model (e.g. "
                    "all-minilm-l6-v2)", "not_found_error", "model", "model_not_found")  # fmt: skip
