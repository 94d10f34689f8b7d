"""The training loop: next-token cross-entropy, AdamW with warmup + cosine, gradient accumulation and clipping,
autocast (bf16 on CPU and CUDA, fp16 with a grad scaler on CUDA), optional torch.compile, validation at intervals,
checkpoints that survive interrupts, a progress bar, a metrics log, a loss curve and samples at the end.

`train(TrainConfig(...))` runs it; `modernlm train` is a shell over this function.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..files import write_text
from ..model import Transformer
from .config import TrainConfig
from .optim import build_optimizer, lr_at, set_lr
from .parallel import Parallel
from .report import MetricsLog, NullLog, plot_losses, sample_texts
from .setup import RunInputs, prepare

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(ValueError):
    """The run cannot go on (a NaN loss); the message says what happened and what was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    status: str  # "done", "interrupted" (a signal), "paused" (stop_at_step reached), "finished" (nothing left to run)
    losses: list[float] = field(default_factory=list)  # training loss of each step this call ran
    val_loss: float | None = None
    samples: list[str] = field(default_factory=list)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) next-token ids, in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train(
    config: TrainConfig, *, resume: bool = False, stop_at_step: int | None = None, extend: bool = False
) -> TrainResult:
    """Train as `config` says; with `resume`, continue the run in `config.out_dir` from its latest checkpoint with
    exactly the losses an uninterrupted run has (`extend`: to a larger max_steps than it was started with, the
    schedule stretched). `stop_at_step` saves and returns after that many steps. A resumed run that had already
    finished returns status "finished" and runs nothing."""
    if config.parallel != "none":
        raise ValueError(
            f"parallel={config.parallel!r} runs under torch.distributed: call modernlm.distributed.train (the "
            "`modernlm train --parallel` command does), not modernlm.training.train"
        )
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    trainer = Trainer(prepare(config, resume, extend), resume)
    with _interrupts() as interrupted:
        return trainer.run(stop_at_step, interrupted)


class Trainer:
    def __init__(self, inputs: RunInputs, resume: bool) -> None:
        cfg = self.cfg = inputs.config
        self.inputs, self.run_dir, self.data = inputs, inputs.run_dir, inputs.data
        self.parallel = inputs.parallel or Parallel()
        torch.manual_seed(cfg.seed)
        model = inputs.model if inputs.model is not None else Transformer(inputs.model_config)
        self.model = self.parallel.wrap(model.to(cfg.device))  # DDP or FSDP under torch.distributed
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.decay_embeddings)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.step = 0
        # Token positions run through the model (padding of chat batches included; before, batch x seq_len was
        # counted, which overstated shorter padded batches).
        self.tokens = 0
        self.window: list[float] = []  # losses of the steps since the last metrics record (kept in checkpoints)
        self.interrupted = threading.Event()  # run() replaces it with the one the signal handlers set
        if resume:
            self._restore()
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        log = MetricsLog if self.parallel.is_main else NullLog  # rank 0 writes the log
        self.metrics = log(self.run_dir / "metrics.jsonl", self.step if resume else None)
        self.val_batches = self.data.val_batches(cfg.eval_batches, cfg.batch_size, cfg.seq_len)

    def _restore(self) -> None:
        state = self.parallel.restore(self)  # model, optimizer and RNGs; the run state back
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.window[:] = state.get("log_window", [])
        self.tokens = int(state.get("tokens", self.step * self.cfg.batch_size * self.cfg.seq_len * self.cfg.grad_accum))

    # ---- one step -----------------------------------------------------------------------------------------------
    def _autocast(self):
        dtype = _DTYPES[self.cfg.precision]
        device = torch.device(self.cfg.device).type
        return torch.autocast(device, dtype=dtype) if dtype is not None else nullcontext()

    def train_step(self) -> tuple[float, float, int]:
        """One optimizer step over grad_accum micro-batches; returns (loss, gradient norm before clipping, token
        positions run through the model)."""
        cfg = self.cfg
        self.model.train()
        total = torch.zeros((), device=cfg.device)
        tokens = 0
        for k in range(cfg.grad_accum):
            index = self.step * cfg.grad_accum + k
            x, y, weight = self.parallel.train_batch(self.data, index, cfg.batch_size, cfg.seq_len, cfg.seed)
            x, y = x.to(cfg.device), y.to(cfg.device)  # (B, T) each; B / world_size rows under torch.distributed
            tokens += x.numel()
            with self.parallel.sync(self.model, last=k == cfg.grad_accum - 1):
                with self._autocast():
                    logits = self.forward(x)  # (B, T, V)
                # weight 0: no target in this process's rows (the mean would be NaN); a zero keeps the graph
                loss = (next_token_loss(logits, y) * weight if weight else logits.sum() * 0.0) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        loss_value = self.parallel.step_loss(total, self.interrupted)  # over all processes
        tokens *= self.parallel.world_size
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            return loss_value, float("nan"), tokens
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, self.parallel.grad_norm(norm), tokens

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over the fixed validation windows; None without validation text."""
        if not self.val_batches:
            return None
        self.model.eval()
        losses = []
        for x, y in self.val_batches:
            with self._autocast():
                losses.append(float(next_token_loss(self.forward(x.to(self.cfg.device)), y.to(self.cfg.device))))
        return sum(losses) / len(losses)

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self, stop_at_step: int | None, interrupted: threading.Event) -> TrainResult:
        cfg = self.cfg
        self.interrupted = interrupted
        stop = min(cfg.max_steps, stop_at_step or cfg.max_steps)
        if self.step >= cfg.max_steps:  # a finished run resumed: nothing to train, nothing to sample again
            result = TrainResult(self.run_dir, self.step, "finished")
            if self.inputs.publish_weights and self.parallel.is_main:  # a kill may have come before publication
                self.parallel.publish(self.run_dir)
            self._write_outputs(result, only_missing=True)  # those a kill after the last checkpoint did not write
            return result
        result = TrainResult(self.run_dir, self.step, "done")
        self._warn_long_warmup()
        show = cfg.progress and self.parallel.is_main
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", disable=not show)
        window, t_last = self.window, time.perf_counter()
        while self.step < stop and not interrupted.is_set():
            lr = lr_at(self.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            set_lr(self.optimizer, lr)
            loss, norm, step_tokens = self.train_step()
            if not math.isfinite(loss):
                bar.close()
                self._fail(loss)
            self.step += 1
            self.tokens += step_tokens
            result.losses.append(loss)
            window.append(loss)
            now = time.perf_counter()
            tok_s = step_tokens / max(now - t_last, 1e-9)
            t_last = now
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.3f} lr {lr:.2e} gnorm {norm:.2f} {tok_s:,.0f} tok/s", refresh=False)
            if self.step % cfg.log_interval == 0 or self.step == stop:
                self.metrics.write(
                    dict(
                        step=self.step,
                        loss=sum(window) / len(window),
                        lr=lr,
                        grad_norm=norm,
                        tokens=self.tokens,
                        tok_per_s=round(tok_s, 1),
                    )
                )
                window.clear()
            self._maybe_eval(bar, result)
            if cfg.save_interval and self.step % cfg.save_interval == 0:
                self.save()
        bar.close()
        return self._finish(result, interrupted.is_set(), stop)

    def _warn_long_warmup(self) -> None:
        """A warmup longer than the run never reaches the peak learning rate: say so at the start."""
        cfg = self.cfg
        if self.step == 0 and cfg.warmup_steps > cfg.max_steps and self.parallel.is_main:
            top = lr_at(cfg.max_steps - 1, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            logging.getLogger("modernlm").warning(
                "warmup_steps %d is longer than the run's %d steps: the learning rate climbs to %.3g at most, "
                "never to lr %.3g, and the cosine decay never starts; lower --warmup-steps (e.g. %d)",
                cfg.warmup_steps, cfg.max_steps, top, cfg.lr, max(cfg.max_steps // 10, 0),
            )  # fmt: skip

    def _maybe_eval(self, bar, result: TrainResult) -> None:
        every = self.cfg.eval_interval
        if (every and self.step % every == 0) or self.step == self.cfg.max_steps:
            if self.val_batches and self.parallel.is_main and not bar.disable:  # the bar stands still meanwhile
                bar.set_description_str(f"train (evaluating {len(self.val_batches)} held-out batches)")
            val = self.evaluate()
            bar.set_description_str("train")
            if val is not None:
                result.val_loss = val
                self.metrics.write(dict(step=self.step, val_loss=val, val_ppl=math.exp(min(val, 50))))
                if self.parallel.is_main:
                    bar.write(f"step {self.step}: validation loss {val:.4f}, perplexity {math.exp(min(val, 50)):.2f}")

    def save(self) -> Path:
        state = dict(
            step=self.step, data_position=self.step * self.cfg.grad_accum, seed=self.cfg.seed, tokens=self.tokens
        )
        state["log_window"] = list(self.window)  # so the next metrics record averages the same steps after a resume
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        weights = None
        if self.inputs.save_trainable_only:
            weights = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        return self.parallel.save(self, state, weights)

    def _fail(self, loss: float) -> None:
        from .checkpoint import latest_step

        kept = latest_step(self.run_dir)
        where = (
            f"the last good checkpoint (step {kept}) is kept in {self.run_dir}" if kept else "no checkpoint was saved"
        )
        raise TrainingError(
            f"the training loss is {loss} at step {self.step + 1}: the run stopped and {where}. Lower the learning "
            "rate, keep gradient clipping on, or train in fp32; resume from the checkpoint with --resume"
        )

    def _finish(self, result: TrainResult, interrupted: bool, stop: int) -> TrainResult:
        self.save()
        result.step = self.step
        if interrupted or self.step < self.cfg.max_steps:
            if self.parallel.is_main:
                plot_losses(self.metrics.read(), self.run_dir / "loss.png", title=f"{self.run_dir.name}")
            result.status = "interrupted" if interrupted else "paused"
            return result
        self._write_outputs(result)
        return result

    def _write_outputs(self, result: TrainResult, only_missing: bool = False) -> None:
        """The loss curve and, at the end of a run, the samples (`only_missing`: those not there yet)."""
        main = self.parallel.is_main
        if main and not (only_missing and (self.run_dir / "loss.png").is_file()):
            plot_losses(self.metrics.read(), self.run_dir / "loss.png", title=f"{self.run_dir.name}")
        if not (self.cfg.sample_prompts and self.cfg.sample_tokens):
            return
        if only_missing and (self.run_dir / "samples.txt").is_file():
            return
        model = self.parallel.plain_model(self.model)  # every rank calls it (FSDP gathers the shards to rank 0)
        if not main:
            return
        model.eval()
        result.samples = sample_texts(
            model, self.inputs.tokenizer, self.cfg.sample_prompts, self.cfg.sample_tokens, self.cfg.seed
        )
        write_text(self.run_dir / "samples.txt", "\n\n----\n\n".join(result.samples) + "\n")


@contextmanager
def _interrupts():
    """While training, the first Ctrl-C or SIGTERM asks the loop to save and stop after the current step; a second
    Ctrl-C stops at once. Signals can only be caught in the main thread; elsewhere this does nothing."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
