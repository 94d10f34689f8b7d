"""Alignment end to end on a tiny model trained in a fixture on the shipped task's SFT mix (it knows the sums but
rambles): each method improves the held-out task reward with the KL to the reference bounded; the reward model
learns and loads in transformers; the four PPO models share their frozen weights; bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modernlm.alignment import task
from modernlm.alignment.config import AlignConfig, AlignConfigError
from modernlm.alignment.data import AlignDataError, encode_pairs, read_pairs, read_prompts
from modernlm.alignment.tiny import build_tiny_sft_model
from modernlm.threads import one_thread

KL_BOUND = 15.0  # nats per reply: far from the reference would be a collapsed policy, not an aligned one


@pytest.fixture(scope="module")
def sft_root(tmp_path_factory):
    """The shipped task in sft_root/task and a tiny model trained on its SFT mix in sft_root/sft."""
    root = tmp_path_factory.mktemp("align")
    with one_thread():
        build_tiny_sft_model(root / "sft")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(sft_root: Path, method: str, tmp_path: Path, **kw) -> AlignConfig:
    kind = "pairs" if method in ("reward", "dpo") else "prompts"
    data = sft_root / "task"
    answers = {} if method == "reward" else dict(eval_file=str(data / "heldout_prompts.jsonl"), max_new_tokens=12)
    return AlignConfig(
        method=method, base=str(sft_root / "sft"), train_file=str(data / f"train_{kind}.jsonl"),
        heldout_file=str(data / f"heldout_{kind}.jsonl"), out_dir=str(tmp_path / method), eval_interval=0,
        **answers | kw,
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


def test_reward_model_learns_and_loads_in_transformers(sft_root, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from modernlm.alignment.reward import load_reward_model, train_reward

    result = train_reward(_cfg(sft_root, "reward", tmp_path, steps=30, lr=3e-3, batch_size=16))
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


def test_dpo_improves_heldout_reward(sft_root, tmp_path):
    from modernlm.alignment.dpo import train_dpo

    result = train_dpo(_cfg(sft_root, "dpo", tmp_path, steps=30, lr=2e-3, batch_size=16))
    _improved(result)
    assert result.summary["pair_accuracy_after"] > result.summary["pair_accuracy_before"]


def test_dpo_reference_is_the_base_without_adapters(sft_root):
    import modernlm
    from modernlm.alignment.dpo import pair_logps, reference_logps
    from modernlm.finetune.lora import LoraConfig, apply_lora, lora_modules

    tokenizer = modernlm.load_tokenizer(sft_root / "sft")
    pairs = encode_pairs(tokenizer, read_pairs(sft_root / "task" / "heldout_pairs.jsonl")[:5], "pairs")
    policy = apply_lora(_sft_model(sft_root), LoraConfig())
    for m in lora_modules(policy).values():
        torch.nn.init.normal_(m.lora_B)  # a trained adapter: the policy now differs from the base
    ref = reference_logps(policy, None, pairs, tokenizer.eos_token_id, needed=[0, 2, 3])
    with torch.no_grad():
        c, r, _, _ = pair_logps(_sft_model(sft_root), pairs, tokenizer.eos_token_id)
        moved, _, _, _ = pair_logps(policy, pairs, tokenizer.eos_token_id)
    torch.testing.assert_close(ref[[0, 2, 3]], torch.stack([c, r], 1)[[0, 2, 3]])
    assert ref[[1, 4]].isnan().all() and not torch.allclose(moved, c)


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_dpo_loss_options_train(sft_root, tmp_path, loss_type):
    from modernlm.alignment.dpo import train_dpo

    cfg = _cfg(sft_root, "dpo", tmp_path, steps=3, lr=2e-3, loss_type=loss_type, eval_prompts=0)
    result = train_dpo(cfg)
    assert result.summary["pair_loss_after"] < result.summary["pair_loss_before"]


def test_grpo_improves_heldout_reward(sft_root, tmp_path):
    from modernlm.alignment.grpo import train_grpo

    _improved(train_grpo(_cfg(sft_root, "grpo", tmp_path, steps=20, lr=1e-2, group_size=4, ppo_epochs=1)))


def test_dpo_with_an_sft_term_improves_heldout_reward(sft_root, tmp_path):
    from modernlm.alignment.dpo import train_dpo

    result = train_dpo(_cfg(sft_root, "dpo", tmp_path, steps=30, lr=2e-3, batch_size=16, sft_weight=1.0))
    _improved(result)
    assert "the chosen replies' token NLL (RPO)" in (result.run_dir / "before_after.md").read_text()


def test_ppo_improves_heldout_reward(sft_root, tmp_path):
    from modernlm.alignment.ppo import train_ppo

    _improved(train_ppo(_cfg(sft_root, "ppo", tmp_path, steps=30, lr=3e-3, batch_size=16)))


# ---- the four PPO models over shared weights ----------------------------------------------------------------------
def _save_reward_model(path: Path, base: str | Path, tokenizer=None) -> Path:
    import modernlm
    from modernlm.alignment.reward import RewardModel, save_reward_model

    torch.manual_seed(0)
    tokenizer = tokenizer or modernlm.load_tokenizer(base)
    return save_reward_model(RewardModel(modernlm.load_model(base), tokenizer.eos_token_id), path, tokenizer)


def test_ppo_models_share_one_frozen_copy_of_each_base(sft_root, tmp_path):
    from modernlm.alignment.common import adapters_off, weight_bytes
    from modernlm.alignment.ppo import build_models

    rm_dir = _save_reward_model(tmp_path / "rm", sft_root / "sft")
    cfg = _cfg(sft_root, "ppo", tmp_path, reward_model=str(rm_dir))
    tokenizer, actor, reference, reward_model, critic = build_models(cfg)
    assert reference is None  # the reference is the actor with its adapters off
    ptr = lambda m, name: m.get_parameter(name).untyped_storage().data_ptr()  # noqa: E731
    for name in ("embed.weight", "blocks.0.attn.q_proj.weight", "blocks.1.ffn.up_proj.weight"):
        assert ptr(critic.body, name) == ptr(reward_model.body, name)  # the critic adds adapters, not a copy
    trainable = {n for n, p in [*actor.named_parameters(), *critic.named_parameters()] if p.requires_grad}
    assert trainable and all(".lora_" in n or n == "score.weight" for n in trainable)
    assert not any(p.requires_grad for p in reward_model.parameters())
    base = _sft_model(sft_root)
    trained = sum(p.numel() * p.element_size() for n, p in [*actor.named_parameters(), *critic.named_parameters()]
                  if p.requires_grad)  # fmt: skip
    shared = weight_bytes([actor, reward_model, critic])
    # the policy's base and the reward model's once each, plus adapters and head (and RoPE buffers per module)
    assert shared <= weight_bytes([base]) + weight_bytes([reward_model]) + trained + 4096
    assert shared < 0.6 * 4 * weight_bytes([base])  # four full models would be 4x
    torch.testing.assert_close(critic.score.weight, reward_model.score.weight)  # initialised from the reward model
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad(), adapters_off(actor):
        torch.testing.assert_close(actor(ids), base(ids))


def _sft_model(sft_root: Path):
    import modernlm

    return modernlm.load_model(sft_root / "sft")


# ---- bad input ----------------------------------------------------------------------------------------------------
def _jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "What is 1 + 1?", "chosen": "2", "rejected": " 2 "}, "same reply"),
        ({"prompt": "What is 1 + 1?", "chosen": "2", "rejected": ""}, "rejected.*empty response"),
        ({"prompt": "What is 1 + 1?", "chosen": [{"role": "assistant", "content": "  "}], "rejected": "3"}, "empty"),
        ({"prompt": "", "chosen": "2", "rejected": "3"}, "prompt is empty"),
        ({"prompt": "What is 1 + 1?", "chosen": "2"}, r"missing \['rejected'\]"),
        ({"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "2", "rejected": "3"}, "end with a user turn"),
    ],
)
def test_bad_pairs_are_refused_with_their_line(tmp_path, record, message):
    path = _jsonl(tmp_path / "pairs.jsonl", {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}, record)
    with pytest.raises(AlignDataError, match=message) as error:
        read_pairs(path)
    assert "pairs.jsonl:2" in str(error.value)


def test_pairs_in_conversation_forms(tmp_path):
    user = {"role": "user", "content": "What is 2 + 2?"}
    reply = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    path = _jsonl(
        tmp_path / "pairs.jsonl",
        {"prompt": [user], "chosen": [reply("4")], "rejected": [reply("5")]},
        {"chosen": [user, reply("4")], "rejected": [user, reply("I think it is 4.")]},  # trl's implicit prompt
    )
    pairs = read_pairs(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [([user], "4", "5"), ([user], "4", "I think it is 4.")]
    other = {"role": "user", "content": "What is 3 + 3?"}
    _jsonl(path, {"chosen": [user, reply("4")], "rejected": [other, reply("6")]})
    with pytest.raises(AlignDataError, match="share every turn but the last"):
        read_pairs(path)


def test_reward_model_with_another_vocabulary_is_refused(sft_root, tmp_path):
    from modernlm.alignment.ppo import build_models
    from modernlm.training.bpe import train_bpe

    other = train_bpe(["an entirely different corpus of words " * 20], 280)
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    import modernlm

    torch.manual_seed(0)
    body = modernlm.Transformer(modernlm.preset("llama-tiny", vocab_size=other.vocab_size, d_model=32))
    from modernlm.alignment.reward import RewardModel, save_reward_model

    rm_dir = save_reward_model(RewardModel(body, other.eos_token_id), tmp_path / "rm", other)
    with pytest.raises(AlignDataError, match="another vocabulary than the actor"):
        build_models(_cfg(sft_root, "ppo", tmp_path, reward_model=str(rm_dir)))


def test_sampled_evaluation_scores_k_replies_per_prompt(sft_root, tmp_path):
    """Sampling at a vanishing temperature is greedy decoding: the sampled reward and accuracy then equal the greedy
    ones; hot sampling leaves the greedy answers as they were; without eval_samples nothing is sampled."""
    from modernlm import load_model, load_tokenizer
    from modernlm.alignment.common import evaluate

    tokenizer, model = load_tokenizer(str(sft_root / "sft")), load_model(str(sft_root / "sft"))
    prompts = read_prompts(sft_root / "task" / "heldout_prompts.jsonl", need_answer=True)[:8]
    cold = _cfg(sft_root, "grpo", tmp_path, eval_samples=3, temperature=1e-6)
    e = evaluate(model, model, tokenizer, prompts, cold)
    assert e.reward is not None and (e.sampled_reward, e.sampled_accuracy) == pytest.approx((e.reward, e.accuracy))
    hot = evaluate(model, model, tokenizer, prompts, _cfg(sft_root, "grpo", tmp_path, eval_samples=3, temperature=2.0))
    assert hot.sampled_reward is not None and 0 <= hot.sampled_reward <= 1 and hot.answers == e.answers
    plain = evaluate(model, model, tokenizer, prompts, _cfg(sft_root, "grpo", tmp_path))
    assert plain.sampled_reward is None and "eval_sampled_reward" not in plain.record()


def test_config_refuses_what_the_method_would_ignore():
    with pytest.raises(AlignConfigError, match="eval_samples, temperature set, but reward does not use it"):
        AlignConfig(method="reward", eval_samples=4, temperature=0.7).validate()
    with pytest.raises(AlignConfigError, match="eval_samples must be >= 0"):
        AlignConfig(method="grpo", eval_samples=-1).validate()
    with pytest.raises(AlignConfigError, match="group_size set, but dpo does not use it"):
        AlignConfig(method="dpo", group_size=8).validate()
    with pytest.raises(AlignConfigError, match="group_size must be >= 2"):
        AlignConfig(method="grpo", group_size=1).validate()
    with pytest.raises(AlignConfigError, match="loss_type"):
        AlignConfig(method="dpo", loss_type="kto").validate()
    with pytest.raises(AlignConfigError, match="method"):
        AlignConfig(method="rlhf").validate()
    with pytest.raises(AlignConfigError, match="token_mean must be 'batch' or 'sequence', got 'token'"):
        AlignConfig(method="grpo", token_mean="token").validate()
    with pytest.raises(AlignConfigError, match="sft_weight set, but ppo does not use it"):
        AlignConfig(method="ppo", sft_weight=1.0).validate()
    with pytest.raises(AlignConfigError, match="sft_weight must be >= 0"):
        AlignConfig(method="dpo", sft_weight=-1.0).validate()


def test_cli_align_runs_and_reports_bad_input_in_one_line(sft_root, tmp_path, capsys):
    from modernlm.cli.__main__ import main

    data = sft_root / "task"
    common = ["--model", str(sft_root / "sft"), "--max-steps", "2", "--eval-prompts", "2", "--max-new-tokens", "6"]
    args = ["align", "dpo", *common, "--train", str(data / "train_pairs.jsonl"), "--out", str(tmp_path / "run")]
    assert main([*args, "--eval", str(data / "heldout_prompts.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "before reward" in out and "after  reward" in out and "before_after.md" in out
    bad = _jsonl(tmp_path / "bad.jsonl", {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "2"})
    assert main(["align", "dpo", *common, "--train", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "same reply" in capsys.readouterr().err
    assert main(["align", "task", "--out", str(tmp_path / "task"), "--seed", "3"]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "task").iterdir()}
    expected = task.write_task(tmp_path / "direct", seed=3)
    assert written == {p.name: p.read_text() for p in expected.values()}
    assert main(["align", "task", "--lr", "0.1"]) == 2 and "takes --out and --seed, not --lr" in capsys.readouterr().err


# ---- SmolLM2 (slow): the shipped task on the embedded model, after an SFT stage -----------------------------------
# Measured (2026-12-02, one thread each): SmolLM2-135M-Instruct itself answers these sums in long sentences that
# rarely end inside 16 tokens (held-out reward 0.16, accuracy 0.32), and DPO from it at lr 5e-4 made the replies
# longer (reward 0.15, KL 7.4). The pipeline of the issue starts from an SFT model: 60 LoRA steps on the task's SFT
# mix make SmolLM2 answer "Well, adding it up gives 14." (reward 0.47, accuracy 0.94), and alignment makes it concise.
@pytest.fixture(scope="module")
def smol_sft(tmp_path_factory):
    from modernlm.finetune.config import FinetuneConfig, default_train_config
    from modernlm.finetune.run import finetune

    root = tmp_path_factory.mktemp("smol")
    paths = task.write_task(root / "task")
    train = default_train_config()
    train.out_dir, train.max_steps, train.num_threads = str(root / "sft"), 60, 1
    result = finetune(FinetuneConfig(train_file=str(paths["sft"]), compare_prompts=0, train=train))
    return str(result.model_dir)


def _smol_cfg(method: str, base: str, tmp_path: Path, **kw) -> AlignConfig:
    kw = dict(eval_prompts=32, eval_interval=0, max_new_tokens=16, lr=2e-4, num_threads=1) | kw
    return AlignConfig(method=method, base=base, out_dir=str(tmp_path / method), **kw)


@pytest.mark.slow
def test_smollm2_reward_model_beats_chance(smol_sft, tmp_path):
    from modernlm.alignment.reward import train_reward

    result = train_reward(_smol_cfg("reward", smol_sft, tmp_path, steps=20, batch_size=4, eval_pairs=32))
    assert result.loss_after < result.loss_before and result.accuracy_after > 0.6


@pytest.mark.slow
def test_smollm2_dpo_with_its_sft_term_makes_the_answers_concise(smol_sft, tmp_path):
    """Measured: reward 0.468 -> 0.839, KL 3.1, reply length 10.4 -> 2.4 tokens (plain DPO at lr 5e-4 from the same
    SFT model kept the leading number but lost the end of the reply: reward 0.016, KL 56.6)."""
    from modernlm.alignment import run_method

    cfg = _smol_cfg("dpo", smol_sft, tmp_path, steps=40, batch_size=8, eval_pairs=32, sft_weight=1.0)
    result = run_method(cfg)
    assert result.after.reward > result.before.reward + 0.2, (result.before, result.after)
    assert result.after.kl < KL_BOUND and result.after.length < result.before.length


# Measured (2026-12-03, one thread each, 31 held-out prompts, greedy and 4 sampled replies each at temperature 1):
# from the SFT model (greedy reward 0.468, sampled 0.310 at accuracy 0.589), GRPO (30 batches of 4 x 8 replies, 2
# epochs, lr 1e-3, per-reply mean; 23 minutes) raised the sampled reward to 0.468 (accuracy 0.935) and the greedy
# one to 0.484, KL 0.68; PPO (30 batches of 8, lr 1e-3; 11 minutes) to 0.367 (accuracy 0.726), greedy unchanged at
# 0.468, KL 0.32. Both make the sampled replies right, not concise: the SFT model's sampled bare numbers are mostly
# wrong (3% right, 17% wrong), so a bare start earns less than words (0.16 against 0.31 per reply) and the greedy
# reply, already right 94% of the time, keeps its words. DPO's pairs teach the bare answer directly.
@pytest.mark.slow
@pytest.mark.parametrize(
    "method, settings",
    [
        ("grpo", dict(steps=30, batch_size=4, group_size=8, ppo_epochs=2, lr=1e-3, token_mean="sequence")),
        ("ppo", dict(steps=30, batch_size=8, lr=1e-3)),
    ],
)
def test_smollm2_rl_improves_heldout_reward(smol_sft, tmp_path, method, settings):
    """The expected held-out reward (the mean over sampled replies, which RL maximises) rises; the greedy reply's
    does not fall; the KL to the reference stays bounded."""
    from modernlm.alignment import run_method

    result = run_method(_smol_cfg(method, smol_sft, tmp_path, eval_samples=4, **settings))
    before, after = result.before, result.after
    assert after.sampled_reward > before.sampled_reward + 0.03, (before, after)
    assert after.sampled_accuracy > before.sampled_accuracy and after.reward >= before.reward, (before, after)
    assert after.kl < KL_BOUND


def test_a_causal_lm_is_not_a_reward_model_and_ppo_without_answers_needs_one(sft_root, tmp_path):
    from modernlm.alignment.ppo import train_ppo
    from modernlm.alignment.reward import RewardModelError, load_reward_model

    with pytest.raises(RewardModelError, match="LlamaForCausalLM is not a reward model"):
        load_reward_model(sft_root / "sft")
    prompts = _jsonl(tmp_path / "prompts.jsonl", {"prompt": "What is 1 + 1?"})
    cfg = _cfg(sft_root, "ppo", tmp_path, steps=1)
    cfg.train_file, cfg.heldout_file = str(prompts), None
    with pytest.raises(AlignDataError, match='missing "answer".*or give a reward model'):
        train_ppo(cfg)


def test_task_readme_says_some_sft_answers_are_wrong_on_purpose(tmp_path, capsys):
    from modernlm.cli.__main__ import main

    paths = task.write_task(tmp_path / "t")
    assert "deliberately wrong" in paths["readme"].read_text()
    rows = [json.loads(line) for line in paths["sft"].read_text().splitlines()]
    answers = {p.prompt: p.answer for part in task.problems() for p in part}
    wrong = [r for r in rows if not task.is_correct(r["completion"], answers[r["prompt"]])]
    assert len(wrong) * 5 == len(rows)  # one reply in five, as the README says
    assert main(["align", "task", "--out", str(tmp_path / "u")]) == 0
    assert "deliberately wrong" in capsys.readouterr().out


def test_curves_are_a_grid_not_one_long_row(tmp_path):
    from PIL import Image

    from modernlm.alignment.report import CURVES, plot_curves

    records = [{"step": s, **{k: float(s) for k in CURVES[:8]}} for s in range(3)]
    with Image.open(plot_curves(records, tmp_path / "curves.png", "eight curves")) as png:
        width, height = png.size
    assert width <= 4 * 320 + 10 and height >= 2 * 280  # 2 rows of 4, not 2560 x 320
