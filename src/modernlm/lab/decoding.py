"""Greedy and beam search against top-k and top-p sampling: diversity (distinct n-grams within a text, Li et al.
2016; self-BLEU between samples of one prompt, Zhu et al. 2018) against quality measured as the model's own
perplexity of what it wrote (the unfiltered distribution, temperature 1). The full run uses the embedded
SmolLM2-135M-Instruct; the quick run a tiny random model (the metrics' machinery, not the verdict)."""

from __future__ import annotations

import math

import torch

from ..config import preset
from ..generation.generate import generate
from ..model import Transformer
from . import Finding, experiment
from ._train import one_thread

STRATEGIES = {  # name -> generate() options
    "greedy": dict(temperature=0.0),
    "beam 4": dict(num_beams=4),
    "top-k 50": dict(temperature=1.0, top_k=50),
    "top-p 0.9": dict(temperature=1.0, top_p=0.9),
    "sampling": dict(temperature=1.0),
}
DETERMINISTIC = ("greedy", "beam 4")
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Describe your ideal weekend.",
    "Explain why the sky is blue.",
    "Write a poem about the sea.",
    "What makes a good friend?",
    "Tell me about a city you would like to visit.",
    "Describe a rainy afternoon.",
    "Write the opening of a mystery novel.",
]


def distinct_n(ids: list[int], n: int) -> float:
    """Distinct n-grams over all n-grams of one text (1.0: no n-gram repeats; a looping text tends to 0)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list[str]) -> float | None:
    """Mean sentence BLEU (sacrebleu, 0-100) of each text against the others as references; None without sacrebleu."""
    try:
        import sacrebleu
    except ImportError:
        return None
    return sum(
        sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)
    ) / len(texts)  # fmt: skip


@torch.no_grad()
def continuation_nll(model, prompt: list[int], new: list[int]) -> float:
    """Sum of -log p(token) over `new` after `prompt` under the model (temperature 1, no filter), float64 softmax."""
    ids = torch.tensor([prompt + new])  # (1, P + N)
    logp = model(ids).double().log_softmax(-1)[0, len(prompt) - 1 : -1]  # (N, V): the positions predicting `new`
    return float(-logp.gather(-1, torch.tensor(new)[:, None]).sum())


def quick_model() -> Transformer:
    """The quick run's model: llama-tiny with random weights (seed 0), wide enough an init that it prefers tokens."""
    torch.manual_seed(0)
    return Transformer(preset("llama-tiny", init_std=0.2)).eval()


def _setup(quick: bool):
    """(model, prompts as ids, decode(ids) -> text, eos id, new tokens, samples per prompt)."""
    if quick:
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, 512, (8,), generator=g).tolist() for _ in range(3)]
        return quick_model(), prompts, lambda ids: " ".join(map(str, ids)), None, 16, 3
    from ..loading import load_model, load_tokenizer

    model, tok = load_model().eval(), load_tokenizer()

    def encode(p: str) -> list[int]:
        messages = [{"role": "user", "content": p}]
        return tok.encode(tok.apply_chat_template(messages) if tok.chat_template else p)

    return model, [encode(p) for p in PROMPTS], tok.decode, tok.eos_token_id, 64, 5


def _generations(model, prompts, eos, new_tokens, k) -> dict[str, list[list[list[int]]]]:
    """strategy -> per prompt, k generations (deterministic strategies: run once, the same text k times)."""
    out = {}
    for name, options in STRATEGIES.items():
        reps = 1 if name in DETERMINISTIC else k
        rows = [p for p in prompts for _ in range(reps)]  # each prompt `reps` times, one batch
        new = generate(model, rows, new_tokens, eos_token_id=eos, seed=0 if reps > 1 else None, **options)
        new = [[t for t in ids if t != eos] for ids in new]
        out[name] = [new[i * reps : (i + 1) * reps] * (k // reps) for i in range(len(prompts))]
    return out


@one_thread()
def _measure(quick: bool) -> dict:
    model, prompts, decode, eos, new_tokens, k = _setup(quick)
    gens = _generations(model, prompts, eos, new_tokens, k)
    stats = {}
    for name, per_prompt in gens.items():
        texts = [g for samples in per_prompt for g in samples[: 1 if name in DETERMINISTIC else k]]
        nll = tokens = 0.0
        for p, samples in zip(prompts, per_prompt, strict=True):
            for g in samples[: 1 if name in DETERMINISTIC else k]:
                nll, tokens = nll + continuation_nll(model, p, g), tokens + len(g)
        bleus = [self_bleu([decode(g) for g in samples]) for samples in per_prompt]
        stats[name] = dict(
            distinct_1=sum(distinct_n(t, 1) for t in texts) / len(texts),
            distinct_2=sum(distinct_n(t, 2) for t in texts) / len(texts),
            self_bleu=None if bleus[0] is None else sum(bleus) / len(bleus),
            perplexity=math.exp(nll / max(tokens, 1)),
            mean_length=tokens / len(texts),
        )
    example = {name: decode(per_prompt[0][0]) for name, per_prompt in gens.items()}
    return dict(stats=stats, generations=gens, prompts=prompts, samples_per_prompt=k, new_tokens=new_tokens,
                example=example, model="llama-tiny, random" if quick else "smollm2-135m-instruct")  # fmt: skip


@experiment(
    "decoding-diversity",
    "Greedy decoding and beam search give repetitive, low-diversity text that the model itself finds most likely; "
    "top-k and top-p sampling trade some of that likelihood for diversity",
    "study cards on decoding strategies; Holtzman et al. 2020 (The Curious Case of Neural Text Degeneration); "
    "Li et al. 2016 (distinct-n); Zhu et al. 2018 (Texygen: self-BLEU)",
)
def decoding_diversity(quick: bool) -> Finding:
    m = _measure(quick)
    s = m["stats"]
    det, sampled = [s[n] for n in DETERMINISTIC], [s["top-k 50"], s["top-p 0.9"]]
    more_diverse = max(d["distinct_2"] for d in det) < min(x["distinct_2"] for x in sampled)
    more_likely = max(d["perplexity"] for d in det) < min(x["perplexity"] for x in sampled)
    verdict = "confirmed" if more_diverse and more_likely else "depends" if more_diverse or more_likely else "refuted"
    bleu_note = "" if s["greedy"]["self_bleu"] is not None else " (self-BLEU not measured: sacrebleu is missing)"
    summary = (
        f"{m['model']}, {len(m['prompts'])} prompts, up to {m['new_tokens']} new tokens, "
        f"{m['samples_per_prompt']} samples per prompt for the sampling strategies. Distinct 1-/2-grams within a "
        "text (of tokens), self-BLEU between the samples of a prompt (100: identical), and the model's own "
        "perplexity of its text: "
        + "; ".join(
            f"{n}: {v['distinct_1']:.2f} / {v['distinct_2']:.2f}, self-BLEU "
            + ("n/a" if v["self_bleu"] is None else f"{v['self_bleu']:.0f}")
            + f", perplexity {v['perplexity']:.2f}"
            for n, v in s.items()
        )
        + f"{bleu_note}. Greedy and beam are deterministic: their samples of a prompt are one text (self-BLEU 100). "
        "Rule: the claim holds if greedy's and beam's distinct 2-grams are below both samplers' and their perplexity "
        f"below both samplers'. Greedy/beam {'are' if more_diverse else 'are NOT'} less diverse within a text than "
        f"top-k and top-p, and {'are' if more_likely else 'are NOT'} more likely under the model."
    )

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        for n, v in s.items():
            ax1.plot(v["perplexity"], v["distinct_2"], "o")
            ax1.annotate(n, (v["perplexity"], v["distinct_2"]), fontsize=8)
            if v["self_bleu"] is not None:
                ax2.bar(n, v["self_bleu"])
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("the model's perplexity of its own text (lower: more likely)")
        ax1.set_ylabel("distinct 2-grams within a text (diversity)")
        ax2.set_ylabel("self-BLEU between samples of a prompt")
        ax2.tick_params(axis="x", labelsize=8)

    return Finding(verdict, summary, m, plot)
