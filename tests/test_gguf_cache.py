"""The converted-GGUF cache: a later load reads the converted copy and gets the very tensors of a direct load; a
changed file, a half-written entry or an unwritable cache never gives a wrong or failed load."""

from __future__ import annotations

import os

import pytest
import torch
from gguf import GGMLQuantizationType as Q

import modernlm
from modernlm.checkpoints import gguf_cache
from modernlm.checkpoints.gguf import load_gguf
from test_gguf import tiny_weights, write_tiny


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MODERNLM_CACHE", str(root))
    return root


@pytest.fixture
def tiny_gguf(tmp_path, write_gguf):
    return write_tiny(write_gguf, tmp_path / "tiny.gguf", "llama", tiny_weights(seed=1), Q.Q4_1)


def entries(root):
    return sorted(p.name for p in (root / "gguf").iterdir() if not p.name.startswith(".")) if root.exists() else []


def test_cached_load_equals_direct_load(cache, tiny_gguf):
    config, direct = load_gguf(tiny_gguf)
    first = modernlm.load_model(tiny_gguf)  # converts
    assert len(entries(cache)) == 1
    second = modernlm.load_model(tiny_gguf)  # reads the converted copy
    assert second.config.to_dict() == config.to_dict()
    for name, tensor in direct.items():
        torch.testing.assert_close(second.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(first.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_a_changed_file_is_converted_again(cache, tiny_gguf, write_gguf):
    modernlm.load_model(tiny_gguf)
    write_tiny(write_gguf, tiny_gguf, "llama", tiny_weights(seed=2), Q.Q8_0)  # same path, new content
    os.utime(tiny_gguf, ns=(1, 1))  # a different mtime even if the write fell in the same clock tick
    _, direct = load_gguf(tiny_gguf)
    reloaded = modernlm.load_model(tiny_gguf)
    assert len(entries(cache)) == 2
    torch.testing.assert_close(reloaded.state_dict()["embed.weight"], direct["embed.weight"], rtol=0, atol=0)


def test_an_incomplete_entry_is_rebuilt(cache, tiny_gguf):
    directory = gguf_cache.entry_dir(tiny_gguf)
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"half a file")  # a conversion killed mid-write, no marker
    _, direct = load_gguf(tiny_gguf)
    model = modernlm.load_model(tiny_gguf)
    torch.testing.assert_close(model.state_dict()["embed.weight"], direct["embed.weight"], rtol=0, atol=0)
    assert (directory / gguf_cache.DONE).is_file()


def test_switched_off_writes_nothing(cache, tiny_gguf, monkeypatch):
    monkeypatch.setenv("MODERNLM_GGUF_CACHE", "0")
    modernlm.load_model(tiny_gguf)
    assert entries(cache) == []


def test_unwritable_cache_warns_and_loads_directly(tmp_path, tiny_gguf, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MODERNLM_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="cannot write the GGUF cache"):
        model = modernlm.load_model(tiny_gguf)
    _, direct = load_gguf(tiny_gguf)
    torch.testing.assert_close(model.state_dict()["embed.weight"], direct["embed.weight"], rtol=0, atol=0)


def test_tokenizer_from_the_cache_equals_the_gguf_tokenizer(smollm2_gguf, hf_smollm2_tokenizer):
    ours = modernlm.load_tokenizer(smollm2_gguf)  # through the session's private cache
    assert (gguf_cache.entry_dir(smollm2_gguf) / "tokenizer.json").is_file()
    text = "Héllo, wörld! 你好 🙂 def f(x):\n\treturn x**2"
    assert ours.encode(text) == hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
    chat = [{"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(chat) == hf_smollm2_tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert (ours.bos_token_id, ours.eos_token_id) == (
        hf_smollm2_tokenizer.bos_token_id,
        hf_smollm2_tokenizer.eos_token_id,
    )


def test_a_killed_conversion_leaves_nothing_for_good(cache, tiny_gguf):
    """A conversion killed mid-way leaves its staging directory; the next start removes it (and older versions'
    `.tmp-XXXX` directories once they are an hour old), keeps a live conversion's, and converts again."""
    import time

    root = cache / "gguf"
    root.mkdir(parents=True)
    dead = root / f".{gguf_cache.entry_dir(tiny_gguf).name}.tmp-{2**22 + 7}-deadbeef"
    (dead / "model.safetensors").parent.mkdir()
    (dead / "model.safetensors").write_bytes(b"\0" * 1000)
    legacy = root / ".tmp-k3j4h5g6"
    legacy.mkdir()
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    live = root / f".other.tmp-{os.getpid()}-00000000"
    live.mkdir()
    modernlm.load_model(tiny_gguf)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [live.name]
    assert len(entries(cache)) == 1


def test_a_damaged_entry_is_rebuilt_not_reported(cache, tiny_gguf, caplog):
    """An entry marked complete whose weights or tokenizer were damaged afterwards (a disk error, a stray edit) is
    converted again, with a notice, and the load gives the direct load's tensors."""
    modernlm.load_model(tiny_gguf)
    directory = gguf_cache.entry_dir(tiny_gguf)
    (directory / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}")  # truncated after the conversion
    _, direct = load_gguf(tiny_gguf)
    with caplog.at_level("WARNING", logger="modernlm"):
        model = modernlm.load_model(tiny_gguf)
    assert "is damaged" in caplog.text and "converting" in caplog.text
    torch.testing.assert_close(model.state_dict()["embed.weight"], direct["embed.weight"], rtol=0, atol=0)
    modernlm.load_model(tiny_gguf)  # the rebuilt entry is read as it is
    assert len(entries(cache)) == 1 and not [p for p in (cache / "gguf").iterdir() if p.name.startswith(".")]


def test_a_full_cache_disk_warns_once_and_loads_directly(cache, tiny_gguf, monkeypatch):
    """A disk that fills during the conversion: one warning (not a traceback, not one per load), the model loaded from
    the GGUF file itself, and nothing half-written left in the cache."""
    import errno
    import warnings

    from modernlm.checkpoints import gguf_cache as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "save_file", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = modernlm.load_model(tiny_gguf)
        modernlm.load_model(tiny_gguf)
    assert [str(w.message) for w in caught if "GGUF cache" in str(w.message)] == [
        next(str(w.message) for w in caught if "GGUF cache" in str(w.message))
    ]
    assert "no space left" in str(caught[0].message)
    _, direct = load_gguf(tiny_gguf)
    torch.testing.assert_close(model.state_dict()["embed.weight"], direct["embed.weight"], rtol=0, atol=0)
    assert entries(cache) == [] and not list((cache / "gguf").iterdir())
