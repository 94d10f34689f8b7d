"""`finetune(FinetuneConfig(...))`: adapt a pretrained model to chat data with LoRA or in full, on the trainer.

The run directory holds what `modernlm train` writes (checkpoints, metrics.jsonl, loss.png; resumable), and at the
end: `adapter/` (LoRA, PEFT's layout), `merged/` (LoRA folded in) or `model/` (full) as a Hugging Face directory
with the tokenizer, and `before_after.md`, the greedy answers of the base and the tuned model to held-out prompts.
The held-out loss before training is logged as the validation record of step 0.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import clean_stale, write_text
from ..loading import load_model, load_tokenizer, parse_device, save_model
from ..training.parallel import Parallel
from ..training.setup import RunInputs, check_run_dir
from ..training.trainer import Trainer, TrainResult, _interrupts
from .chat_data import ChatData, encode_conversations, read_jsonl
from .config import CONFIG_NAME, FinetuneConfig
from .examples import write_example_dataset
from .lora import apply_lora, merge_and_unload, save_adapter, trainable_parameters


@dataclass
class Comparison:
    messages: list[dict]  # the held-out conversation up to the reply
    reference: str  # the held-out assistant reply
    before: str
    after: str = ""

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class FinetuneResult:
    run_dir: Path
    status: str  # "done", "interrupted" or "paused", as TrainResult's
    step: int
    val_before: float | None
    val_after: float | None
    trainable: int  # parameters trained
    total: int
    seconds: float  # wall time of this call
    model: torch.nn.Module | None = None  # the tuned model (adapters merged in), when done
    model_dir: Path | None = None  # merged/ (LoRA) or model/ (full)
    adapter_dir: Path | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    train: TrainResult | None = None


def finetune(
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    stop_at_step: int | None = None,
    extend: bool = False,
    parallel: Parallel | None = None,
) -> FinetuneResult:
    """Run `cfg`; with `resume`, continue the run in its directory from the latest checkpoint (same losses as an
    uninterrupted run). `stop_at_step` saves and returns after that many optimizer steps. `parallel`: the hooks of
    a run under torch.distributed (`modernlm.distributed.finetune` passes them); rank 0 writes the outputs."""
    t0 = time.perf_counter()
    parallel = _open_run(cfg, resume, extend, parallel)
    tokenizer = load_tokenizer(cfg.base)
    data, prompts = _data(cfg, tokenizer)  # bad data fails here, before the model loads
    model = load_model(cfg.base, quantize=cfg.quantize)  # QLoRA: a quantized frozen base (qlora.py)
    if cfg.train.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len {cfg.train.seq_len} exceeds the model's context {model.config.max_seq_len}")
    comparisons = _prepare_model(cfg, model, tokenizer, prompts if parallel.is_main else [])
    loop = cfg.train if parallel.device is None else dataclasses.replace(cfg.train, device=str(parallel.device))
    inputs = RunInputs(
        loop, model.config, tokenizer, data, cfg.run_dir, model, publish_weights=False, save_trainable_only=cfg.lora
    )
    inputs.parallel = parallel
    trainer = Trainer(inputs, resume)
    val_before = _val_before(trainer, resume)
    with _interrupts() as interrupted:
        train_result = trainer.run(stop_at_step, interrupted)
    result = _result(cfg, model, train_result, val_before)
    if _publishes(cfg, train_result):
        plain = parallel.plain_model(trainer.model)  # every process (FSDP gathers to rank 0)
        if parallel.is_main:
            _publish(cfg, plain, tokenizer, comparisons, result)
    result.seconds = time.perf_counter() - t0
    return result


def _open_run(cfg: FinetuneConfig, resume: bool, extend: bool, parallel: Parallel | None) -> Parallel:
    """Check the config, the device and the run directory before any work; rank 0 writes the config (and the example
    data when there is no train_file) into it. Returns the run's hooks (a single process's when `parallel` is None)."""
    if cfg.validate().train.parallel != "none" and parallel is None:
        raise ValueError(f"parallel={cfg.train.parallel!r} runs under modernlm.distributed.finetune (the CLI's "
                         "--parallel does that), not modernlm.finetune.run.finetune")  # fmt: skip
    parallel = parallel or Parallel()
    device = parse_device(parallel.device or cfg.train.device)  # cuda without a GPU: said here, before any work
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device (with a grad scaler); on CPU use precision bf16 or fp32")
    check_run_dir(cfg.run_dir, cfg, CONFIG_NAME, resume, extend)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = cfg.run_dir
    if parallel.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_stale(run_dir, recursive=True)  # what a killed earlier start of this run left half-written
        cfg.to_json(run_dir / CONFIG_NAME)
        if cfg.train_file is None:
            write_example_dataset(run_dir / "data")
    parallel.barrier()  # the others read what rank 0 wrote
    return parallel


def _result(cfg: FinetuneConfig, model, train_result: TrainResult, val_before: float | None) -> FinetuneResult:
    """The run's result after training, before its outputs are published (`seconds` is set last)."""
    trainable, total = trainable_parameters(model)
    return FinetuneResult(
        run_dir=cfg.run_dir,
        status=train_result.status,
        step=train_result.step,
        val_before=val_before,
        val_after=train_result.val_loss,
        trainable=trainable,
        total=total,
        seconds=0.0,
        train=train_result,
    )


def _publishes(cfg: FinetuneConfig, train_result: TrainResult) -> bool:
    """Whether the run writes its outputs now: it is done, or it had finished but a kill came before they were
    written."""
    run_dir = cfg.run_dir
    outputs = [run_dir / "before_after.md", run_dir / ("merged" if cfg.lora else "model") / "config.json"]
    missing = not all(p.is_file() for p in outputs)  # finished: a kill came before these were written
    return train_result.status == "done" or (train_result.status == "finished" and missing)


def _prepare_model(cfg: FinetuneConfig, model, tokenizer, prompts) -> list[Comparison]:
    """Add the adapters (or unfreeze every weight) and answer the comparison prompts with the base model: with
    LoRA after adding the adapters (B = 0 gives exactly the base output; a bad target fails before any work)."""
    torch.manual_seed(cfg.train.seed)  # LoRA's A initialisation
    if prompts:
        _say(cfg, f"answering {len(prompts)} prompts with the base model (before_after.md)")
    if not cfg.lora:
        comparisons = _compare(model, tokenizer, prompts, cfg.answer_tokens)
        model.requires_grad_(True)
        return comparisons
    lora = cfg.lora_config()
    lora.extra["base_model"] = cfg.base
    apply_lora(model, lora)
    return _compare(model, tokenizer, prompts, cfg.answer_tokens)


def _data(cfg: FinetuneConfig, tokenizer) -> tuple[ChatData, list[tuple[list[dict], str]]]:
    """The encoded data, and the held-out prompts to compare on: (messages before the reply, the reply)."""
    if cfg.train_file is None:  # written by finetune() before
        train_path, val_path = cfg.run_dir / "data" / "train.jsonl", cfg.run_dir / "data" / "val.jsonl"
    else:
        train_path, val_path = Path(cfg.train_file), cfg.val_file and Path(cfg.val_file)
    max_len = cfg.train.seq_len + 1  # inputs and shifted labels are seq_len long
    train_conversations = read_jsonl(train_path)
    if val_path:
        val_conversations = read_jsonl(val_path)
    else:  # hold out the last tenth of the training file
        if len(train_conversations) < 2:
            raise ValueError(f"{train_path} has one example: give a val_file, or more examples to hold some out")
        n_val = max(len(train_conversations) // 10, 1)
        train_conversations, val_conversations = train_conversations[:-n_val], train_conversations[-n_val:]
    train = encode_conversations(tokenizer, train_conversations, max_len, str(train_path))
    val = encode_conversations(tokenizer, val_conversations, max_len, str(val_path or train_path))
    prompts = []
    for messages in val_conversations[: cfg.compare_prompts]:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append((messages[:last], messages[last]["content"]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ChatData(train, val, pad if pad is not None else 0), prompts


def _val_before(trainer: Trainer, resume: bool) -> float | None:
    """The held-out loss of the untrained model: evaluated and logged as step 0, or read back when resuming."""
    if resume:
        records = [r for r in trainer.metrics.read() if r["step"] == 0 and "val_loss" in r]
        return records[0]["val_loss"] if records else None
    val = trainer.evaluate()
    if val is not None:
        trainer.metrics.write(dict(step=0, val_loss=val, val_ppl=float(torch.tensor(val).exp())))
    return val


@torch.no_grad()
def _answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy replies to each conversation, rendered with the chat template."""
    if not conversations:
        return []
    from ..generation import generate

    model.eval()
    ids = [tokenizer.encode(tokenizer.apply_chat_template(c, add_generation_prompt=True)) for c in conversations]
    eos = tokenizer.eos_token_id
    new = generate(model, ids, max_new_tokens, temperature=0.0, eos_token_id=eos)
    return [tokenizer.decode(row[:-1] if row and row[-1] == eos else row).strip() for row in new]


def _compare(model, tokenizer, prompts: list[tuple[list[dict], str]], max_new_tokens: int) -> list[Comparison]:
    before = _answers(model, tokenizer, [c for c, _ in prompts], max_new_tokens)
    return [Comparison(c, ref, b) for (c, ref), b in zip(prompts, before, strict=True)]


def _say(cfg: FinetuneConfig, text: str) -> None:
    """A phase of the run after the step bar has finished, on stderr (not with --no-progress)."""
    if cfg.train.progress:
        print(f"finetune: {text}", file=sys.stderr, flush=True)


def _publish(cfg: FinetuneConfig, model, tokenizer, comparisons: list[Comparison], result: FinetuneResult) -> None:
    """Write adapter/ (LoRA), merged/ or model/, and before_after.md; fill them into `result`."""
    run_dir = cfg.run_dir
    _say(cfg, f"answering {len(comparisons)} prompts after training (before_after.md), then writing {run_dir}")
    if cfg.lora:
        result.adapter_dir = save_adapter(model, run_dir / "adapter")
        model = merge_and_unload(model)
        if cfg.quantize:  # the layers without adapters are still quantized: publish float weights
            from ..quant import dequantize_model

            model = dequantize_model(model)
    after = _answers(model, tokenizer, [c.messages for c in comparisons], cfg.answer_tokens)
    for c, a in zip(comparisons, after, strict=True):
        c.after = a
    result.comparisons = comparisons
    result.model = model
    result.model_dir = save_model(model, run_dir / ("merged" if cfg.lora else "model"), tokenizer)
    write_text(run_dir / "before_after.md", render_comparison(result, cfg))


def render_comparison(result: FinetuneResult, cfg: FinetuneConfig) -> str:
    """Markdown: the run's held-out loss before and after, then each prompt with the reference and both answers."""
    how = f"LoRA r={cfg.r}, alpha={cfg.alpha:g} on {', '.join(cfg.targets)}" if cfg.lora else "full fine-tuning"
    loss = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    exact = lambda attr: sum(getattr(c, attr) == c.reference for c in result.comparisons)  # noqa: E731
    n = len(result.comparisons)
    lines = [
        f"# Before and after fine-tuning {cfg.base}",
        "",
        f"{how}; {result.step} steps; {result.trainable:,} of {result.total:,} parameters trained.",
        f"Held-out loss (assistant tokens): {loss(result.val_before)} before, {loss(result.val_after)} after.",
        f"Greedy answers equal to the reference: {exact('before')}/{n} before, {exact('after')}/{n} after.",
    ]
    for i, c in enumerate(result.comparisons, 1):
        lines += ["", f"## {i}. {c.prompt}", "", f"- reference: {c.reference}", f"- before: {c.before!r}"]
        lines.append(f"- after: {c.after!r}")
    return "\n".join(lines) + "\n"
