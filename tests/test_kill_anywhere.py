"""Kill anywhere: a training run and a fine-tuning run are SIGKILLed at each of their file writes in turn (just
before a temporary file is renamed into place, just after, and in the middle of a log append), then continued the
way a user would (`--resume` when a checkpoint exists, the same command again otherwise). Every continued run must
finish with the losses of a straight run, the same weights, and its outputs present; no temporary file may be
left behind.

The kill is injected in a child process by wrapping os.replace, modernlm.files.swap (a directory exchanged whole) and
modernlm.files.append_line (every write of the project goes through files.py, so these are all its commit points).
Children are forked from a server process that has imported torch and modernlm once (multiprocessing's forkserver),
so each run starts in milliseconds. The default suite kills at a spread of points; `pytest -m slow` kills at every
one.

`save_model` over an earlier save is killed at every one of its write events and at random moments (a fixed seed), on
both of files.py's ways of swapping a directory: each time the directory loads as exactly the old model or the new one,
weights and tokenizer together, and the next save leaves no temporary behind.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from safetensors.torch import load_file

TEXT = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.\n" * 30
HOOK = """
import os, signal, sys
os.environ.update(ENV)
import modernlm.files as files
target, seen = KILL_AT, [0]
def event():
    seen[0] += 1
    if seen[0] == target:
        os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_append = os.replace, files.append_line
def replace(a, b):
    event()  # before the rename: the temporary is complete, the target still the old one
    real_replace(a, b)
    event()  # after it
def append_line(path, line):
    event()
    with open(path, "a", encoding="utf-8") as f:  # half a line, as a kill mid-write leaves it
        f.write(line[: len(line) // 2])
    event()
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[len(line) // 2 :] + "\\n")
real_swap = files.swap
def swap(a, b):  # a whole directory exchanged for the old one (save_model, adapters, caches)
    event()
    done = real_swap(a, b)
    event()
    return done
os.replace, files.append_line, files.swap = replace, append_line, swap
from modernlm.cli.__main__ import main
sys.exit(main(ARGS))
"""
_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["torch", "torch._dynamo", "modernlm.cli.__main__", "modernlm.training"])


def cli(args: list[str], env: dict, kill_at: int = 10**9) -> int:
    """Run `modernlm ARGS` in a forked child that SIGKILLs itself at write event `kill_at`; its exit code."""
    child = _SERVER.Process(target=exec, args=(HOOK, {"ARGS": args, "ENV": env, "KILL_AT": kill_at}))
    child.start()
    child.join(timeout=600)
    return child.exitcode


def train_args(out: Path, data: Path) -> list[str]:
    args = ["train", "--out", str(out), "--data", str(data), "--vocab-size", "300", "--model", "llama-tiny"]
    args += ["--max-steps", "6", "--seq-len", "32", "--batch-size", "4", "--save-interval", "2"]
    args += ["--eval-interval", "3", "--sample-tokens", "4", "--no-progress", "--num-threads", "1"]
    return args + ["--model-override", "d_model=32", "--model-override", "max_seq_len=64", "--val-fraction", "0.1"]


def losses(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def continue_run(args: list[str], run_dir: Path, env: dict) -> int:
    """What a user does after a crash: resume if the run has a checkpoint, else start the same command again."""
    has_checkpoint = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*"))
    return cli(args + (["--resume"] if has_checkpoint else []), env)


def sweep(args_for, straight_dir: Path, tmp: Path, env: dict, points: list[int] | None, outputs: list[str]) -> int:
    assert cli(args_for(straight_dir), env) == 0
    expected, weights = losses(straight_dir), load_file(straight_dir / outputs[0])
    k, tried = 0, 0
    while True:
        k += 1
        if points is not None and k > max(points):
            break
        if points is not None and k not in points:
            continue
        run_dir = tmp / f"kill-{k}"
        killed = cli(args_for(run_dir), env, kill_at=k)
        if killed == 0:
            assert points is None, f"the run made fewer than {k} writes: lower the kill points"
            break  # past the last write: the run finished untouched
        assert killed == -9, (k, killed)
        assert continue_run(args_for(run_dir), run_dir, env) == 0, k
        assert losses(run_dir) == expected, (k, losses(run_dir), expected)
        for name, tensor in load_file(run_dir / outputs[0]).items():
            assert tensor.equal(weights[name]), (k, name)
        for name in outputs:
            assert (run_dir / name).exists(), (k, name)
        assert not leftovers(run_dir), (k, leftovers(run_dir))
        tried += 1
    return tried


@pytest.fixture
def env(tmp_path) -> dict:
    data = tmp_path / "zen.txt"
    data.write_text(TEXT)
    return {"MODERNLM_CACHE": str(tmp_path / "cache")}


def _training(tmp_path, env, points):
    data = tmp_path / "zen.txt"
    outputs = ["model.safetensors", "loss.png", "samples.txt", "tokenizer.json", "train_config.json"]
    tried = sweep(lambda out: train_args(out, data), tmp_path / "straight", tmp_path, env, points, outputs)
    assert not leftovers(tmp_path / "cache")
    return tried


def test_training_survives_a_kill_at_spread_write_points(tmp_path, env):
    assert _training(tmp_path, env, points=[1, 7, 19, 33, 47]) == 5


@pytest.mark.slow
def test_training_survives_a_kill_at_every_write(tmp_path, env):
    tried = _training(tmp_path, env, points=None)
    print(f"training: {tried} kill points survived")
    assert tried >= 50  # 54 writes when this was written


def _finetuning(base, tmp_path, env, points):
    pairs = [("Is simple better?", "Simple is better than complex."), ("And flat?", "Flat is better than nested.")]
    lines = "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs * 4)
    (tmp_path / "train.jsonl").write_text(lines)
    (tmp_path / "val.jsonl").write_text(lines[: len(lines) // 4])

    def args(out: Path) -> list[str]:
        return ["finetune", "--model", str(base), "--train", str(tmp_path / "train.jsonl"), "--val",
                str(tmp_path / "val.jsonl"), "--out", str(out), "--max-steps", "4", "--batch-size", "2", "--max-len",
                "32", "--save-interval", "2", "--eval-interval", "2", "--compare-prompts", "1", "--no-progress",
                "--num-threads", "1"]  # fmt: skip

    outputs = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "merged/model.safetensors"]
    return sweep(args, tmp_path / "straight", tmp_path, env, points, [*outputs, "before_after.md"])


def test_finetuning_survives_a_kill_at_spread_write_points(tmp_path, env, tiny_chat_dir):
    assert _finetuning(tiny_chat_dir(TEXT), tmp_path, env, points=[3, 14, 21]) == 3


@pytest.mark.slow
def test_finetuning_survives_a_kill_at_every_write(tmp_path, env, tiny_chat_dir):
    tried = _finetuning(tiny_chat_dir(TEXT), tmp_path, env, points=None)
    print(f"fine-tuning: {tried} kill points survived")
    assert tried >= 30  # 32 writes when this was written


# ---- a whole directory: save_model over an earlier save ------------------------------------------------------------
SAVE = """
import os, signal, sys
os.environ.update(ENV)
import modernlm, modernlm.files as files
if NO_EXCHANGE:  # a file system without renameat2: the old directory is renamed aside, then the new one in
    files.swap = lambda a, b: False
model, tokenizer = modernlm.load(SOURCE)
seen = [0]
def event():
    seen[0] += 1
    if seen[0] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_swap = os.replace, files.swap
def replace(a, b):
    event()
    real_replace(a, b)
    event()
def swap(a, b):
    event()
    done = real_swap(a, b)
    event()
    return done
os.replace, files.swap = replace, swap
READY.set()
modernlm.save_model(model, TARGET, tokenizer)
"""


def _save_in_child(source: Path, target: Path, env: dict, kill_at=10**9, delay=None, no_exchange=False) -> int:
    """save_model(the model at `source`, `target`) in a forked child, SIGKILLed at its write event `kill_at` or
    `delay` seconds after it starts saving; its exit code (SAVE_SECONDS: how long the save took, unkilled)."""
    import os
    import signal
    import time

    ready = _SERVER.Event()
    names = {"ENV": env, "SOURCE": str(source), "TARGET": str(target), "KILL_AT": kill_at, "READY": ready}
    child = _SERVER.Process(target=exec, args=(SAVE, {**names, "NO_EXCHANGE": no_exchange}))
    child.start()
    assert ready.wait(timeout=120)
    start = time.perf_counter()
    if delay is not None:
        time.sleep(delay)
        if child.is_alive():
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished between the check and the kill: an unkilled save
                pass
    child.join(timeout=120)
    SAVE_SECONDS[0] = time.perf_counter() - start
    return child.exitcode


SAVE_SECONDS = [0.0]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two small chat models whose weights and tokenizers (vocabulary, template) all differ."""
    from conftest import save_tiny_chat_model

    root = tmp_path_factory.mktemp("two")
    first = save_tiny_chat_model(root / "first", TEXT)
    second = save_tiny_chat_model(root / "second", TEXT.upper() + " Now is better than never.", d_model=48)
    return first, second


def _which(target: Path, models: tuple[Path, Path]) -> int:
    """Which of the two models the directory at `target` loads as, weights and tokenizer together (0 or 1)."""
    import modernlm

    model, tok = modernlm.load(target)
    for k, source in enumerate(models):
        ref, ref_tok = modernlm.load(source)
        if model.config.d_model != ref.config.d_model:
            continue
        for name, tensor in ref.state_dict().items():
            assert model.state_dict()[name].equal(tensor), (target, name)
        assert tok.backend.to_str() == ref_tok.backend.to_str() and tok.chat_template == ref_tok.chat_template
        return k
    raise AssertionError(f"{target} loads as neither model")


def _kill_saves(tmp_path, models, env, kills: list[dict]) -> set[int]:
    """Save the two models in turn over one directory, each save killed as `kills` says; after every kill the
    directory loads as exactly the old model or the new one, and the next save leaves no leftover."""
    import modernlm

    target = tmp_path / "saved"
    model, tok = modernlm.load(models[0])
    modernlm.save_model(model, target, tok)
    current, outcomes = 0, set()
    for kill in kills:
        code = _save_in_child(models[1 - current], target, env, **kill)
        assert code in (0, -9), (kill, code)
        now = _which(target, models)
        if code == 0:
            assert now == 1 - current, kill  # an unkilled save is the new model
        outcomes.add((code, now == current))
        current = now
    assert _save_in_child(models[1 - current], target, env) == 0  # a clean run tidies what the kills left
    assert _which(target, models) == 1 - current
    assert not leftovers(tmp_path), leftovers(tmp_path)
    return outcomes


def test_a_killed_save_model_leaves_the_old_or_the_new_model_at_every_write(tmp_path, two_models, env):
    """A kill before and after each rename of a save (its files inside the staging directory, then the swap of the
    whole directory): the old model until the swap, the new one from it on."""
    for no_exchange in (False, True):
        kills = [{"kill_at": k, "no_exchange": no_exchange} for k in range(1, 21)]
        outcomes = _kill_saves(tmp_path / f"exchange-{not no_exchange}", two_models, env, kills)
        assert {(-9, True), (-9, False), (0, False)} <= outcomes  # old kept, new in place, and a save past its writes


def test_a_save_model_killed_at_random_moments_leaves_the_old_or_the_new_model(tmp_path, two_models, env):
    """SIGKILL at random delays into a save (a fixed seed), many times over, on both swap paths."""
    import random

    rng = random.Random(30)
    assert _save_in_child(two_models[1], tmp_path / "timing", env) == 0
    span = SAVE_SECONDS[0]  # the save and the child's exit
    kills = [{"delay": rng.uniform(0, span), "no_exchange": rng.random() < 0.3} for _ in range(24)]
    outcomes = _kill_saves(tmp_path, two_models, env, kills)
    assert (-9, True) in outcomes, outcomes  # some kills fell inside a save
