"""files.py, the one way modernlm writes: all or nothing at every moment, and no temporary left behind."""

from __future__ import annotations

import os

import pytest

from modernlm import files


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "b": ')  # half a file, then the writer fails
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_text_bytes_and_copies_are_replaced_whole(tmp_path):
    target = tmp_path / "notes.txt"
    files.write_text(target, "old")
    files.write_text(target, "naïve ✓")
    assert target.read_bytes() == "naïve ✓".encode()
    files.copy_file(target, tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text(encoding="utf-8") == "naïve ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.txt", "notes.txt"]


def test_a_directory_is_staged_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "entry"
    for content in ("first", "second"):
        with files.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "data.txt").write_text(content)
    assert (target / "data.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with files.atomic_path(tmp_path / "x"):
            pass


def test_clean_stale_removes_dead_writers_leftovers_only(tmp_path):
    dead, live = 2**22 + 99, os.getpid()
    (tmp_path / f".a.json.tmp-{dead}-0badc0de").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f".b.tmp-{dead}-0badc0de").mkdir()
    (tmp_path / f".c.json.tmp-{live}-00000000").write_text("x")
    (tmp_path / ".not-ours.tmp").write_text("x")
    removed = files.clean_stale(tmp_path, recursive=True)
    assert sorted(p.name for p in removed) == [f".a.json.tmp-{dead}-0badc0de", f".b.tmp-{dead}-0badc0de"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".c.json.tmp-{live}-00000000", ".not-ours.tmp", "sub"]


def test_a_torn_last_log_line_is_skipped(tmp_path):
    from modernlm.training.report import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a kill in the middle of an append
    assert log.read() == [{"step": 1, "loss": 2.0}]
    MetricsLog(tmp_path / "metrics.jsonl", resume_step=1).write({"step": 2, "loss": 1.5})
    assert [r["step"] for r in log.read()] == [1, 2]


def test_weights_get_the_mode_of_every_other_file(tmp_path):
    """safetensors creates its file 0600; model.safetensors and adapter_model.safetensors are given the mode a plain
    open() gives (0644 under the usual umask), like config.json beside them."""
    import stat

    import modernlm
    from modernlm.finetune.lora import LoraConfig, apply_lora, save_adapter

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    model = modernlm.Transformer(modernlm.preset("llama-tiny"))
    out = modernlm.save_model(model, tmp_path / "m")
    assert mode(out / "model.safetensors") == mode(out / "config.json") == 0o666 & ~files._UMASK
    adapter = save_adapter(apply_lora(model, LoraConfig()), tmp_path / "adapter")
    assert mode(adapter / "adapter_model.safetensors") == mode(adapter / "adapter_config.json")
    with files.atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir(mode=0o700)
    assert mode(tmp_path / "d") == 0o777 & ~files._UMASK
