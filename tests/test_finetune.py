"""Fine-tuning the embedded SmolLM2-135M on a tiny chat dataset with the trainer: the loss falls, the outputs reload
(adapter onto a fresh base, merged model in transformers) with the same logits, resume is exact, bad input is
refused clearly."""

from __future__ import annotations

import json

import pytest
import torch

import modernlm
from modernlm.cli.__main__ import main
from modernlm.config import preset
from modernlm.finetune.chat_data import ChatData, Example
from modernlm.finetune.config import FinetuneConfig, default_train_config
from modernlm.finetune.examples import example_conversations
from modernlm.finetune.lora import LoraConfig, LoraError, apply_lora, load_adapter
from modernlm.finetune.run import finetune
from modernlm.model import Transformer
from modernlm.training.setup import RunInputs
from modernlm.training.trainer import Trainer

IDS = torch.tensor([[1, 4093, 198, 2683, 314, 216, 34, 35, 1232, 216, 36, 37, 47]])  # (1, T) any SmolLM2 ids


def write_jsonl(path, conversations):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    conversations = example_conversations(24)
    train = write_jsonl(directory / "train.jsonl", conversations[:16])
    return train, write_jsonl(directory / "val.jsonl", conversations[16:])


def tiny_config(out_dir, data_files, **train) -> FinetuneConfig:
    settings = dict(max_steps=4, batch_size=4, lr=2e-3, warmup_steps=1, eval_interval=0, save_interval=2)
    loop = default_train_config()
    for key, value in {**settings, "out_dir": str(out_dir), "progress": False, **train}.items():
        setattr(loop, key, value)
    train_file, val_file = (str(p) for p in data_files)
    return FinetuneConfig(train_file=train_file, val_file=val_file, compare_prompts=1, answer_tokens=8, train=loop)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data_files):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # robust to a busy CPU: two threads on a shared core thrash
    yield finetune(tiny_config(tmp_path_factory.mktemp("run") / "lora", data_files))
    torch.set_num_threads(threads)


def test_finetuning_lowers_held_out_loss_and_writes_the_outputs(tuned):
    assert tuned.status == "done" and tuned.step == 4
    assert tuned.val_after < tuned.val_before
    assert 0 < tuned.trainable < tuned.total / 100
    run = tuned.run_dir
    for name in ("adapter/adapter_model.safetensors", "merged/config.json", "merged/tokenizer.json", "loss.png"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()  # adapter checkpoints are not published as a model
    text = (run / "before_after.md").read_text()
    assert tuned.comparisons[0].prompt in text and "before" in text and "after" in text


def test_saved_adapter_reloads_onto_a_fresh_base_with_the_same_logits(tuned):
    fresh = load_adapter(modernlm.load_model(), tuned.run_dir / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS), tuned.model(IDS), atol=1e-4, rtol=0)


def test_merged_model_loads_in_transformers_with_the_same_logits(tuned):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tuned.run_dir / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS).logits, tuned.model(IDS), atol=1e-4, rtol=0)


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, data_files, tuned):
    cfg = tiny_config(tmp_path / "resumed", data_files)
    first = finetune(cfg, stop_at_step=2)
    assert first.status == "paused" and first.model is None
    second = finetune(cfg, resume=True)
    assert first.train.losses + second.train.losses == tuned.train.losses
    assert second.val_before == tuned.val_before and second.val_after == tuned.val_after
    # tokens count the positions of each (padded) batch, carried across the resume; chat batches are shorter than
    # batch x seq_len, which was counted before
    tokens = [_last_tokens(run.run_dir) for run in (tuned, second)]
    assert tokens[0] == tokens[1] < 4 * cfg.train.batch_size * cfg.train.seq_len


def _last_tokens(run_dir) -> int:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "tokens" in m][-1]["tokens"]


def test_optimizer_holds_only_trainable_parameters(tmp_path):
    model = Transformer(preset("llama-tiny", d_model=32, n_heads=2, n_kv_heads=1, vocab_size=64, max_seq_len=32))
    apply_lora(model, LoraConfig(r=2, targets=("q_proj", "v_proj")))
    rows = [Example(list(range(1, 12)), [-100] * 5 + list(range(6, 12)))] * 4
    cfg = default_train_config()
    cfg.out_dir, cfg.seq_len, cfg.progress = str(tmp_path), 16, False
    trainer = Trainer(RunInputs(cfg, model.config, None, ChatData(rows, rows, 0), tmp_path, model, False, True), False)
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_optimizer) == 4 * model.config.n_layers  # lora_A and lora_B of two projections per block
    loss, _, _ = trainer.train_step()  # -100 labels (prompt, padding) are ignored by next_token_loss
    assert loss > 0 and torch.isfinite(torch.tensor(loss))


def test_malformed_jsonl_is_one_line_naming_the_line_through_the_cli(tmp_path, data_files, capsys):
    good = data_files[0].read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good[0], good[1], '{"messages": [', good[2]]) + "\n")
    code = main(["finetune", "--train", str(bad), "--val", str(data_files[1]), "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]  # [notices]
    assert code == 2 and len(lines) == 1  # one line, no traceback
    assert lines[0].startswith(f"modernlm finetune: error: {bad}:3: not valid JSON")


def test_bad_lora_settings_are_refused(tmp_path, data_files, capsys):
    cfg = tiny_config(tmp_path / "a", data_files)
    cfg.targets = ["qq_proj"]
    with pytest.raises(LoraError, match="no linear module named"):
        finetune(cfg)
    with pytest.raises(LoraError, match="rank r must be an integer >= 1"):
        finetune(FinetuneConfig(r=0))
    assert main(["finetune", "--r", "0", "--out", str(tmp_path / "b")]) == 2
    assert "rank r must be" in capsys.readouterr().err
