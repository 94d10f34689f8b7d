"""The decode step's runtime: the compiled one-token step against the eager one (and its fallback), and the thread
and wait policy that keeps decoding graceful on a busy machine."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from modernlm import threads
from modernlm.generation import generate
from modernlm.generation.compiled import compile_decode, decode_step
from modernlm.quant import quantize


def test_thread_count_leaves_busy_cores_alone():
    assert threads.choose_threads(cores=4, busy=0.2) == 4
    assert threads.choose_threads(cores=4, busy=1.4) == 3
    assert threads.choose_threads(cores=2, busy=7.0) == 1
    assert threads.choose_threads("3", cores=2) == 3 and threads.choose_threads("all", cores=6) == 6
    with pytest.raises(ValueError, match="MODERNLM_THREADS must be a positive integer, 'all' or 'auto', got '0'"):
        threads.choose_threads("0")


def test_wait_policy_is_a_default_the_user_overrides():
    env = {}
    threads.prepare_env(env)
    assert env == {"GOMP_SPINCOUNT": threads.SPIN_COUNT}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.prepare_env(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_wait_policy_is_set_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import modernlm, os, sys; print(os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [threads.SPIN_COUNT, "True"]


def test_failed_compile_falls_back_to_the_same_tokens(monkeypatch, caplog, tiny_decoder):
    model = quantize(tiny_decoder("wide"), "int4")
    want = generate(model, [1, 2, 3], 6)

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    compile_decode(model)
    with caplog.at_level(logging.INFO, logger="modernlm"):
        assert generate(model, [1, 2, 3], 6) == want
        assert generate(model, [1, 2, 3], 6) == want
    assert sum("could not compile the decode step" in r.message for r in caplog.records) == 1
    assert decode_step(model).failed


@pytest.mark.slow
@pytest.mark.parametrize("kind", [None, "int4"])
def test_compiled_step_equals_eager(kind, tiny_decoder):
    model = tiny_decoder("wide") if kind is None else quantize(tiny_decoder("wide"), kind)
    prompts = [[1, 2, 3, 4], [5, 6]]
    want = generate(model, prompts, 8)
    compile_decode(model)
    assert generate(model, prompts, 8) == want
    assert not decode_step(model).failed
