"""Alignment end to end on a tiny model trained in a fixture on the shipped task's SFT mix (it knows the sums but
rambles): each method improves the held-out task reward with the KL to the reference bounded; the reward model
learns and loads in transformers; the four PPO models share their frozen weights; bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modernlm.alignment import task
from modernlm.alignment.config import AlignConfig
from modernlm.alignment.data import read_pairs
from tiny_align import build_tiny_sft_model, one_thread

KL_BOUND = 15.0  # nats per reply: far from the reference would be a collapsed policy, not an aligned one


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    with one_thread():
        build_tiny_sft_model(root / "sft")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(tiny: Path, method: str, tmp_path: Path, **kw) -> AlignConfig:
    kind = "pairs" if method in ("reward", "dpo") else "prompts"
    data = tiny / "task"
    return AlignConfig(
        method=method, base=str(tiny / "sft"), train_file=str(data / f"train_{kind}.jsonl"),
        heldout_file=str(data / f"heldout_{kind}.jsonl"), eval_file=str(data / "heldout_prompts.jsonl"),
        out_dir=str(tmp_path / method), eval_interval=0, max_new_tokens=12, **kw,
    )  # fmt: skip


def _improved(result) -> None:
    assert result.after.reward > result.before.reward, (result.before, result.after)
    assert 0 < result.after.kl < KL_BOUND
    assert result.before.kl == 0  # with LoRA's B = 0 the policy is the reference
    text = (result.run_dir / "before_after.md").read_text()
    assert "| before |" in text and "- after:" in text
    assert (result.run_dir / "curves.png").stat().st_size > 0
    assert (result.model_dir / "config.json").is_file() and (result.run_dir / "adapter").is_dir()


def test_task_is_built_deterministically_with_an_exact_checker(tmp_path):
    a, b = task.write_task(tmp_path / "a", seed=3), task.write_task(tmp_path / "b", seed=3)
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in task.FILES)
    assert task.write_task(tmp_path / "c", seed=4)["heldout_prompts"].read_bytes() != a["heldout_prompts"].read_bytes()
    train, heldout = task.problems(3)
    assert len(train) + len(heldout) == 155 and not {p.prompt for p in train} & {p.prompt for p in heldout}
    pair_prompts = {json.loads(line)["prompt"] for line in a["train_pairs"].read_text().splitlines()}
    assert pair_prompts == {p.prompt for p in train}  # held-out questions stay out of the alignment data
    assert task.reward("7", "7") == 1.0 and task.reward("I think the answer is 7.", "7") == 0.5
    assert task.reward("8", "7") == 0.0 and task.reward("", "7") == 0.0 and task.is_correct("so 7", "7")
    for pair in read_pairs(a["heldout_pairs"]):
        assert pair.chosen == next(p.answer for p in heldout if p.prompt == pair.prompt[0]["content"])


def test_reward_model_learns_and_loads_in_transformers(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from modernlm.alignment.reward import load_reward_model, train_reward

    result = train_reward(_cfg(tiny, "reward", tmp_path, steps=30, lr=3e-3, batch_size=16))
    assert result.loss_after < result.loss_before and result.accuracy_after > 0.7  # chance is 0.5
    ours = load_reward_model(result.model_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    pad = ours.pad_id
    ids = torch.tensor([[5, 9, 40, 41, 42, 7], [5, 9, 40, pad, pad, pad], [11, 12, pad, pad, pad, pad]])
    ids[ids == pad] = pad
    with torch.no_grad():
        expected = hf(input_ids=ids).logits[:, 0]
    torch.testing.assert_close(ours(ids), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.model(ids), expected, rtol=1e-4, atol=1e-5)


def test_dpo_improves_heldout_reward(tiny, tmp_path):
    from modernlm.alignment.dpo import train_dpo

    result = train_dpo(_cfg(tiny, "dpo", tmp_path, steps=30, lr=2e-3, batch_size=16))
    _improved(result)
    assert result.summary["pair_accuracy_after"] > result.summary["pair_accuracy_before"]


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_dpo_loss_options_train(tiny, tmp_path, loss_type):
    from modernlm.alignment.dpo import train_dpo

    cfg = _cfg(tiny, "dpo", tmp_path, steps=3, lr=2e-3, loss_type=loss_type, eval_prompts=0)
    result = train_dpo(cfg)
    assert result.summary["pair_loss_after"] < result.summary["pair_loss_before"]


def test_grpo_improves_heldout_reward(tiny, tmp_path):
    from modernlm.alignment.grpo import train_grpo

    _improved(train_grpo(_cfg(tiny, "grpo", tmp_path, steps=20, lr=1e-2, group_size=4, ppo_epochs=1)))


def test_ppo_improves_heldout_reward(tiny, tmp_path):
    from modernlm.alignment.ppo import train_ppo

    _improved(train_ppo(_cfg(tiny, "ppo", tmp_path, steps=30, lr=3e-3, batch_size=16)))
