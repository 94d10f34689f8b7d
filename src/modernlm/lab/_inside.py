"""What the lab's look-inside experiments share (issue 29): the embedded SmolLM2, loaded as `modernlm load` does,
and the prompts they read it on."""

from __future__ import annotations

from ..loading import load

MODEL = "smollm2-135m-instruct"
PROMPTS = (
    "The capital of France is Paris, and the capital of Germany is",
    "def add(a, b):\n    return a + b\n\ndef multiply(a, b):\n    return",
    "Water boils at 100 degrees Celsius at sea level, but at higher altitudes it boils at",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "In 1969, Neil Armstrong became the first person to walk on the",
    "To make a cup of tea, first boil the water, then pour it over the",
    "One, two, three, four, five, six, seven, eight,",
    "She opened the door, looked outside, and saw that it was",
)
QUICK_PROMPTS = 3


def smollm2():
    """(model, tokenizer) of the embedded SmolLM2 in float32, in eval mode."""
    model, tokenizer = load(MODEL)
    return model.eval(), tokenizer


def prompts(quick: bool) -> tuple[str, ...]:
    return PROMPTS[:QUICK_PROMPTS] if quick else PROMPTS


def rule(n: int, unit: str) -> str:
    """The lab's verdict rule (lab/_seeds.py) as these experiments apply it, over n paired `unit`s."""
    return (f"Verdict rule (lab/_seeds.py): over {n} {unit}s, paired, a difference counts when the mean of the "
            f"per-{unit} differences exceeds twice their standard deviation.")  # fmt: skip
