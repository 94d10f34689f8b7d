"""Distributed training on CPU with gloo: DDP and FSDP on 2 processes give the losses of 1 process at the same global
batch; a distributed checkpoint resumes on another number of processes (and converts to the ordinary run
directory) with the losses of a straight run; a bad launch says so before any work.

The reference is the ordinary single-process trainer (itself checked for exact resume in test_training.py). The
processes are started the way torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and run
`modernlm train`; they are forked from a server that imported torch and modernlm once, so each starts in
milliseconds. A real `torchrun` launch and the killed-rank test are slow-marked.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TEXT = "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.\n" * 30
CHILD = """
import os, signal, sys
os.environ.update(ENV)
if "LOG_DIR" in ENV:  # this process's stderr to a file of its own
    sys.stderr = open(os.path.join(ENV["LOG_DIR"], "rank" + ENV.get("RANK", "0") + ".err"), "w", buffering=1)
if "SIGNAL_AT" in ENV and ENV["RANK"] == ENV["SIGNAL_RANK"]:  # a signal to this process at its k-th loss
    from modernlm.training import trainer
    real, calls = trainer.next_token_loss, [0]
    def hooked(logits, targets):
        calls[0] += 1
        if calls[0] == int(ENV["SIGNAL_AT"]):
            os.kill(os.getpid(), getattr(signal, ENV["SIGNAL"]))
        return real(logits, targets)
    trainer.next_token_loss = hooked
from modernlm.cli.__main__ import main
sys.exit(main(ARGS))
"""
_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["torch", "modernlm.cli.__main__", "modernlm.training", "modernlm.distributed"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env: dict, world: int | None, timeout: float = 300) -> list[int]:
    """Run `modernlm ARGS` on `world` processes as torchrun would (None: one process, no torchrun variables);
    their exit codes."""
    port, children = free_port(), []
    for rank in range(world or 1):
        ranks = {} if world is None else dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world, LOCAL_WORLD_SIZE=world)
        ranks |= {} if world is None else dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        child_env = {**env, **{k: str(v) for k, v in ranks.items()}}
        child = _SERVER.Process(target=exec, args=(CHILD, {"ARGS": args, "ENV": child_env}))
        child.start()
        children.append(child)
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(timeout=max(deadline - time.monotonic(), 1))
        if child.is_alive():
            child.kill()
    return [c.exitcode for c in children]


def train_args(out: Path, data: Path, *extra: str, steps: int = 4) -> list[str]:
    args = ["train", "--out", str(out), "--data", str(data), "--vocab-size", "300", "--model", "llama-tiny"]
    args += ["--max-steps", str(steps), "--seq-len", "32", "--batch-size", "4", "--save-interval", "2"]
    args += ["--log-interval", "1", "--eval-interval", "0", "--sample-tokens", "0", "--no-progress"]
    args += ["--num-threads", "1", "--val-fraction", "0", "--warmup-steps", "2", "--lr", "3e-3", "--grad-accum", "2"]
    return args + ["--model-override", "d_model=32", "--model-override", "max_seq_len=64", *extra]


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(data file, env, the straight single-process run directory) shared by the tests of this module. Every run
    takes 2 micro-batches of 4 rows per step: with 2 processes, 2 rows of each on each process."""
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "zen.txt"
    data.write_text(TEXT)
    env = {"MODERNLM_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    straight = tmp / "straight"
    assert launch(train_args(straight, data), env, None) == [0]
    return data, env, straight


@pytest.mark.parametrize("mode", ["fsdp", pytest.param("ddp", marks=pytest.mark.slow)])
def test_two_processes_give_the_losses_of_one_at_the_same_global_batch(run, tmp_path, mode):
    data, env, straight = run
    out = tmp_path / mode
    assert launch(train_args(out, data, "--parallel", mode), env, 2) == [0, 0]
    one = straight
    torch.testing.assert_close(losses(out), losses(one), rtol=2e-5, atol=2e-5)  # float reduction order only
    weights, reference = load_file(out / "model.safetensors"), load_file(one / "model.safetensors")
    assert weights.keys() == reference.keys()
    for name, value in weights.items():  # four AdamW steps apart only by the order of float sums
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize(
    "first, second",
    [
        (("fsdp", 2), ("ddp", None)),
        pytest.param(("ddp", None), ("fsdp", 2), marks=pytest.mark.slow),
        pytest.param(("fsdp", 2), ("fsdp", 4), marks=pytest.mark.slow),  # one row of each micro-batch per process
    ],
)
def test_a_distributed_checkpoint_resumes_on_another_number_of_processes(run, tmp_path, first, second):
    """Save with 2 processes, resume with 1 (a group of one), and the reverse, and with 4: the straight run's losses."""
    data, env, straight = run
    out = tmp_path / "run"
    (mode, world), (mode2, world2) = first, second
    assert launch(train_args(out, data, "--parallel", mode, "--stop-at-step", "2"), env, world) == [0] * (world or 1)
    assert (out / "checkpoints" / "step-0000002" / ".metadata").is_file()
    resumed = launch(train_args(out, data, "--parallel", mode2, "--resume"), env, world2)
    assert resumed == [0] * (world2 or 1)
    torch.testing.assert_close(losses(out), losses(straight), rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_a_single_file_checkpoint_resumes_under_fsdp_and_a_distributed_one_converts(run, tmp_path):
    from modernlm.distributed import to_single_file

    data, env, straight = run
    plain = tmp_path / "plain"
    assert launch(train_args(plain, data, "--stop-at-step", "1"), env, None) == [0]
    assert launch(train_args(plain, data, "--parallel", "fsdp", "--stop-at-step", "3", "--resume"), env, 2) == [0, 0]
    converted = to_single_file(plain, tmp_path / "converted")
    assert launch(train_args(converted, data, "--resume"), env, None) == [0]
    torch.testing.assert_close(losses(converted), losses(straight), rtol=2e-5, atol=2e-5)
    for name, value in load_file(straight / "model.safetensors").items():
        torch.testing.assert_close(load_file(converted / "model.safetensors")[name], value, rtol=1e-4, atol=1e-5)


def test_bad_launches_fail_clearly_before_any_work(run, tmp_path, capsys):
    from modernlm.cli.__main__ import main
    from modernlm.training import TrainConfig, train

    data, env, _ = run
    out = tmp_path / "bad"
    assert launch(train_args(out, data, "--parallel", "ddp", "--batch-size", "3"), env, 2) == [2, 2]
    assert not (out / "checkpoints").exists()
    assert main(train_args(out, data, "--parallel", "pipeline")) == 2
    assert "unknown parallel 'pipeline'" in capsys.readouterr().err
    assert main(train_args(out, data, "--parallel", "ddp", "--cpu-offload")) == 2
    assert "cpu_offload" in capsys.readouterr().err
    assert main(train_args(out, data, "--parallel", "fsdp", "--precision", "fp16")) == 2
    assert "use --precision bf16" in capsys.readouterr().err
    assert main(train_args(out, data, "--objective", "mlm", "--parallel", "ddp")) == 2
    assert "drop --parallel" in capsys.readouterr().err
    with pytest.raises(ValueError, match="modernlm.distributed.train"):
        train(TrainConfig(out_dir=str(out), parallel="ddp"))
    if not torch.cuda.is_available():
        assert main(train_args(out, data, "--parallel", "ddp", "--device", "cuda")) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_the_message_of_a_split_that_does_not_divide():
    from modernlm.distributed.hooks import check_batch

    with pytest.raises(ValueError, match=r"batch_size 6 does not split over 4 processes.*multiple of 4, e.g. 4"):
        check_batch(6, 4)


MEASURE = """
import json, os
os.environ.update(ENV)
import torch
from modernlm.config import preset
from modernlm.distributed.measure import local_state_bytes, padding_bound
from modernlm.distributed.setup import init, teardown
from modernlm.distributed.wrap import shard_model
from modernlm.model import Transformer
from modernlm.training.optim import build_optimizer
ctx = init("cpu", 60)
torch.manual_seed(0)
model = shard_model(Transformer(preset("llama-tiny", **OVERRIDES)), "fp32", cpu_offload=False)
optimizer = build_optimizer(model, 1e-3, 0.1)
model(torch.randint(0, 100, (2, 16))).float().mean().backward()
optimizer.step()
found = {**local_state_bytes(model, optimizer), "padding": padding_bound(model, ctx.world_size)}
with open(os.path.join(OUT, f"rank{ctx.rank}.json"), "w") as f:
    json.dump(found, f)
teardown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_fsdp_per_rank_bytes_match_the_accounting(tmp_path, world):
    """Parameters, gradients and optimizer states on each of 2 (4) processes against `per_rank_memory` (the totals
    divided by 2 (4)): each process's storages are within FSDP2's padding (at most world - 1 rows of each tensor)
    of it, and together they hold the whole. Odd sizes (vocabulary 301, width 36) make the shards uneven."""
    from modernlm.analysis.memory import per_rank_memory, training_memory
    from modernlm.config import preset

    overrides = dict(vocab_size=301, d_model=36, n_heads=2, n_kv_heads=1, max_seq_len=64, ffn_hidden=50)
    port = free_port()
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    children = []
    for rank in range(world):
        scope = {
            "ENV": {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            "OUT": str(tmp_path),
            "OVERRIDES": overrides,
        }
        children.append(_SERVER.Process(target=exec, args=(MEASURE, scope)))
        children[-1].start()
    for child in children:
        child.join(timeout=120)
    assert [c.exitcode for c in children] == [0] * world
    cfg = preset("llama-tiny", **overrides)
    whole, share = training_memory(cfg, 4, 16), per_rank_memory(cfg, 4, 16, world_size=world, parallel="fsdp")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for part, copies in (("parameters", 1), ("gradients", 1), ("optimizer_states", 2)):
        pad = 4 * copies * ranks[0]["padding"]
        for found in ranks:
            assert share[part] - pad <= found[part] <= share[part] + pad, (part, found[part], share[part], pad)
        assert sum(r[part] for r in ranks) >= whole[part]  # nothing is lost to the split
        assert share[part] == -(-whole[part] // world)


# ---- slow: a real torchrun, a killed rank, a signal to one rank ---------------------------------------------------
@pytest.mark.slow
def test_a_killed_rank_stops_the_others_with_a_clear_error_and_the_checkpoint_survives(run, tmp_path):
    from modernlm.training.checkpoint import latest_step

    data, env, straight = run
    out = tmp_path / "killed"
    args = train_args(out, data, "--parallel", "fsdp", "--save-interval", "1", "--dist-timeout", "60", steps=40)
    signal_env = {**env, "SIGNAL_AT": "11", "SIGNAL_RANK": "1", "SIGNAL": "SIGKILL", "LOG_DIR": str(tmp_path)}
    start = time.monotonic()
    assert launch(args, signal_env, 2, timeout=120) == [2, -9]
    assert time.monotonic() - start < 60  # the lost peer is noticed at once (gloo), not after the timeout
    err = (tmp_path / "rank0.err").read_text()  # rank 1 was SIGKILLed in its step 6 (2 losses a step)
    assert "rank 0 of 2 stopped: a collective with the other processes failed" in err
    assert "The last complete checkpoint (step 5) is kept" in err and "Traceback" not in err
    assert latest_step(out) == 5 and not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert launch(args + ["--resume", "--stop-at-step", "6"], env, None) == [0]  # resumes on one process
    assert latest_step(out) == 6


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step_and_resume_finishes(run, tmp_path):
    data, env, straight = run
    out = tmp_path / "signalled"
    args = train_args(out, data, "--parallel", "ddp", "--save-interval", "0")
    signal_env = {**env, "SIGNAL_AT": "3", "SIGNAL_RANK": "1", "SIGNAL": "SIGTERM"}  # step 2
    assert launch(args, signal_env, 2) == [130, 130]  # both saved step 2 and stopped
    assert (out / "checkpoints" / "step-0000002" / ".metadata").is_file()
    assert launch(args + ["--resume"], env, 2) == [0, 0]
    torch.testing.assert_close(losses(out), losses(straight), rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_torchrun_launches_modernlm_train(run, tmp_path):
    data, env, straight = run
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    command += [str(free_port()), "-m", "modernlm", *train_args(out, data, "--parallel", "ddp")]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 4 steps" in done.stdout and done.stdout.count("done:") == 1  # rank 0 reports, once
    torch.testing.assert_close(losses(out), losses(straight), rtol=2e-5, atol=2e-5)


# ---- fine-tuning: chat rows of different lengths, padding and prompts without loss --------------------------------
@pytest.mark.parametrize(
    "mode, paused",
    [
        ("fsdp", False),
        pytest.param("fsdp", True, marks=pytest.mark.slow),
        pytest.param("ddp", False, marks=pytest.mark.slow),
    ],
)
def test_finetuning_on_two_processes_gives_the_losses_and_adapters_of_one(run, tmp_path, mode, paused, tiny_chat_dir):
    """LoRA fine-tuning where the two halves of a batch hold different numbers of target tokens: each process's loss
    is weighted by its share, so the step is the one-process step (unweighted means would differ here). `paused`:
    stopped at step 2 and resumed (a checkpoint of the adapters alone and their AdamW states)."""
    _, env, _ = run
    base = tiny_chat_dir(TEXT)
    pairs = [("Is simple better?", "Simple is better than complex, and much better than complicated."),
             ("Flat?", "Yes."), ("What counts?", "Readability counts."), ("Errors?", "Never silently.")]  # fmt: skip
    lines = "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs * 4)
    (tmp_path / "train.jsonl").write_text(lines)

    def args(out: Path, *extra: str) -> list[str]:
        return ["finetune", "--model", str(base), "--train", str(tmp_path / "train.jsonl"), "--val",
                str(tmp_path / "train.jsonl"), "--out", str(out), "--max-steps", "4", "--batch-size", "4",
                "--max-len", "32", "--save-interval", "2", "--eval-interval", "2", "--compare-prompts", "1",
                "--no-progress", "--num-threads", "1", "--lr", "1e-2", *extra]  # fmt: skip

    assert launch(args(tmp_path / "one"), env, None) == [0]
    if paused:
        assert launch(args(tmp_path / mode, "--parallel", mode, "--stop-at-step", "2"), env, 2) == [0, 0]
        assert launch(args(tmp_path / mode, "--parallel", mode, "--resume"), env, 2) == [0, 0]
    else:
        assert launch(args(tmp_path / mode, "--parallel", mode), env, 2) == [0, 0]
    records = [
        {(r["step"], k): v for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
         for r in [json.loads(line)] for k, v in r.items() if k in ("loss", "val_loss")}
        for d in ("one", mode)
    ]  # fmt: skip
    if paused:  # a pause logs the loss of the steps since the last record, and the next record starts after it
        records[1] = {key: value for key, value in records[1].items() if key[1] == "val_loss" or key[0] > 4}
        records[0] = {key: value for key, value in records[0].items() if key[1] == "val_loss"}
    assert records[0].keys() == records[1].keys() and len(records[0]) >= 3
    for key, value in records[0].items():
        torch.testing.assert_close(records[1][key], value, rtol=2e-5, atol=2e-5)
    adapter = "adapter/adapter_model.safetensors"
    reference = load_file(tmp_path / "one" / adapter)
    for name, value in load_file(tmp_path / mode / adapter).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5)
    assert (tmp_path / mode / "before_after.md").is_file() and (tmp_path / mode / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_a_damaged_newest_distributed_checkpoint_falls_back_to_the_older_one(run, tmp_path):
    data, env, straight = run
    out = tmp_path / "damaged"
    assert launch(train_args(out, data, "--parallel", "ddp", "--stop-at-step", "4"), env, None) == [0]
    shard = out / "checkpoints" / "step-0000004" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # a disk error in the newest checkpoint
    resumed = launch(train_args(out, data, "--parallel", "ddp", "--resume"), {**env, "LOG_DIR": str(tmp_path)}, None)
    assert resumed == [0]
    assert "resuming from the older complete one, step-0000002" in (tmp_path / "rank0.err").read_text()
    torch.testing.assert_close(losses(out), losses(straight), rtol=2e-5, atol=2e-5)


def test_checkpoint_metadata_that_would_run_code_is_refused(tmp_path):
    """DCP writes `.metadata` with pickle; modernlm reads it with an unpickler that builds only DCP's metadata."""
    import pickle

    from modernlm.distributed.checkpoint import SafeReader
    from modernlm.training.checkpoint import CheckpointError

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError, match="not DCP metadata: refused"):
        SafeReader(tmp_path).read_metadata()
    assert not (tmp_path / "pwned").exists()
