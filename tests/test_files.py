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


# ---- directories swapped whole ------------------------------------------------------------------------------------
def test_a_directory_swap_replaces_it_whole_and_keeps_what_the_writer_does_not_own(tmp_path):
    target = tmp_path / "model"
    with files.atomic_dir(target) as tmp:
        for name in ("config.json", "model-00001-of-00002.safetensors", "notes.md"):
            (tmp / name).write_text("old")
        (tmp / "runs").mkdir()
        (tmp / "runs" / "log.txt").write_text("kept")
    with files.atomic_dir(target, replaces=("config.json", "model*.safetensors")) as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "model.safetensors").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.md", "runs"]
    assert (target / "config.json").read_text() == "new" and (target / "runs" / "log.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the old directory is gone


def test_a_kill_between_the_two_renames_is_undone_by_the_next_reader_or_writer(tmp_path):
    """Without an atomic exchange the old directory is renamed aside first: a kill right then leaves no directory at
    the target; `recover` (run by every write and by the loader) puts the old one back, whole."""
    target = tmp_path / "model"
    dead = 2**22 + 5
    old = tmp_path / f".model.old-{dead}-0123abcd"
    old.mkdir()
    (old / "config.json").write_text("old")
    new = tmp_path / f".model.tmp-{dead}-89abcdef"
    new.mkdir()
    (new / "config.json").write_text("half of the new")
    files.recover(target)
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_next_write_of_a_target_removes_what_a_killed_write_of_it_left(tmp_path):
    """A killed export leaves a large temporary beside its target: the next export of the same file removes it."""
    dead = 2**22 + 11
    left = tmp_path / f".model.gguf.tmp-{dead}-0badc0de"
    left.write_bytes(b"\0" * 4096)
    other = tmp_path / f".other.gguf.tmp-{dead}-0badc0de"  # another target's: left to that target's next write
    other.write_bytes(b"x")
    files.write_bytes(tmp_path / "model.gguf", b"GGUF")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "model.gguf"]


def test_a_swap_exchanges_two_directories_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    if not files.swap(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system has no atomic exchange (the two-rename path is tested above)")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


# ---- full and read-only disks -------------------------------------------------------------------------------------
def test_a_full_disk_is_one_clear_error_and_the_old_file_stays(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "model.safetensors"
    files.write_bytes(target, b"old weights")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(files.WriteError, match=r"no space left to write .*model\.safetensors.*had written 5 bytes"):
        with files.atomic_path(target) as tmp:
            tmp.write_bytes(b"12345")
            full()
    assert target.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 100})())
    with pytest.raises(files.WriteError, match=r"needs 1,000,000 bytes and 100 are free.*nothing was written"):
        with files.atomic_path(target, needed=10**6) as tmp:
            raise AssertionError("the space is checked before the write starts")


def test_a_library_error_for_a_full_disk_becomes_the_same_clear_error(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError: save_model names the directory and the bytes."""
    import modernlm
    from modernlm.checkpoints import base

    model = modernlm.Transformer(modernlm.preset("llama-tiny", d_model=32, n_heads=2, n_kv_heads=1, vocab_size=64))
    modernlm.save_model(model, tmp_path / "saved")
    before = (tmp_path / "saved" / "model.safetensors").read_bytes()

    def full(tensors, path, metadata=None):
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              '"No space left on device" })')  # fmt: skip

    monkeypatch.setattr(base, "save_file", full)
    with pytest.raises(OSError, match=r"no space left to write .*saved.*needs [\d,]+ bytes"):
        modernlm.save_model(model, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs (mounting needs root and a kernel that allows it: skipped otherwise)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_save_model_on_a_really_full_then_read_only_disk(small_disk, tmp_path):
    """A model that does not fit is refused with the bytes needed; on a read-only disk the error says so; the earlier
    save stays whole and loads, and no temporary is left."""
    import subprocess

    import modernlm

    def tiny(d_model):
        config = modernlm.preset("llama-tiny", d_model=d_model, n_heads=2, n_kv_heads=1, vocab_size=64)
        return modernlm.Transformer(config)

    small = tiny(16)
    modernlm.save_model(small, small_disk / "saved")
    with pytest.raises(OSError, match=r"no space left to write .*saved.*needs [\d,]+ bytes"):
        modernlm.save_model(tiny(256), small_disk / "saved")
    with pytest.raises(OSError, match=r"no space left to write .*big\.bin.*had written"):
        files.write_bytes(small_disk / "big.bin", b"\0" * 400_000)  # no size given: found out while writing
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(OSError, match=r"cannot write .*saved.*read-only"):
        modernlm.save_model(small, small_disk / "saved")
    loaded = modernlm.load_model(small_disk / "saved")
    for name, tensor in small.state_dict().items():
        assert loaded.state_dict()[name].equal(tensor), name
    assert sorted(p.name for p in small_disk.iterdir()) == ["saved"]


def test_what_killed_saves_and_exports_left_is_gone_after_the_next_run(tmp_path, capsys):
    """The issue's leftovers: a 163 MiB temporary beside a killed export, a `.model.safetensors.tmp-*` inside a
    directory a killed save_model wrote in place, and the staging directory of a killed save. One successful
    `export` and one `save_model` later, none is left."""
    import modernlm
    from conftest import save_tiny_chat_model
    from modernlm.cli.__main__ import main

    dead = 2**22 + 17
    model_dir = save_tiny_chat_model(tmp_path / "model", "the quick brown fox jumps over the lazy dog. " * 40)
    (model_dir / f".model.safetensors.tmp-{dead}-0badc0de").write_bytes(b"\0" * 1000)  # the in-place writer's
    (tmp_path / f".model.tmp-{dead}-0badc0de").mkdir()  # a killed staged save's
    (tmp_path / f".out.gguf.tmp-{dead}-0badc0de").write_bytes(b"\0" * 10_000)  # a killed export's
    assert main(["export", str(model_dir), str(tmp_path / "out.gguf"), "--type", "q8_0"]) == 0
    model, tok = modernlm.load(model_dir)
    modernlm.save_model(model, model_dir, tok)
    capsys.readouterr()
    left = [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert left == [], left


def test_a_link_to_a_directory_is_followed_and_kept(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with files.atomic_dir(tmp_path / "link") as tmp:
        (tmp / "config.json").write_text("new")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "config.json").read_text() == "new"
