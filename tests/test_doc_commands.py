"""The commands the README and docs/ show run and exit 0, so the pages cannot drift from the code again (issue 28: a
README command once crashed).

`RUNS` marks the fenced shell lines that run offline and quickly, by page and exact text; each runs here in-process
through `modernlm.cli.__main__.main`, in a scratch directory, with new tokens capped at `-n 4` (the text is the
model's, the point is the exit code). `README_NOT_RUN` says, for each other `modernlm` line of the README, why it is
not run. A marked line that is no longer on its page, or a README line in neither list, fails: a changed command is
either run again or said to be skipped."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest

from modernlm.cli.__main__ import main
from modernlm.threads import one_thread

ROOT = Path(__file__).parents[1]
SHELL = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)

RUNS = {
    "README.md": [
        "modernlm info",
        'modernlm generate --prompt "The sky is blue because" -n 64',
        'modernlm generate --chat --prompt "What is the capital of France?" --stream',
        'modernlm generate --prompt "Once upon a time" -t 0.8 --top-p 0.95 --seed 1',
        'modernlm generate --prompt "def fib(n):" --num-beams 4 --length-penalty 1.0',
        "modernlm chat",
    ],
    "docs/run.md": [
        'modernlm generate --chat -p "What is gravity?" --quantize gguf',
        'modernlm generate --chat -p "..." --speculative ngram',
        "modernlm info --quantize int8",
    ],
    "docs/variants.md": [
        "modernlm flops gpt-2017 --seq-len 512",
        "modernlm flops llama --checkpointing --json",
        "modernlm memory gpt2 --batch-size 8 --seq-len 1024 --precision bf16 --optimizer adamw",
        "modernlm memory smollm2-135m-instruct --batch-size 4 --seq-len 256 --targets q_proj,v_proj --r 8",
    ],
    "docs/compress.md": ["modernlm memory smollm2-135m-instruct --targets q_proj,v_proj --quantize int4"],
    "docs/align.md": [
        "modernlm align task --out runs/task",
        "modernlm memory smollm2-135m-instruct --ppo q_proj,v_proj --seq-len 256",
    ],
    "docs/distributed.md": ["modernlm memory llama --parallel fsdp --world-size 8 --batch-size 64"],
    "docs/family.md": ['modernlm embed "A man is playing guitar." "Someone plays an instrument." --similarity'],
    "docs/lab.md": ["modernlm lab list"],
}
README_NOT_RUN = {
    'modernlm generate --model path/to/hf_dir_or_file.gguf --dtype bfloat16 --prompt "..."': "a placeholder path",
}
GENERATES = ("generate", "chat")


def shell_lines(page: str) -> list[str]:
    """The command of each line of the page's fenced shell blocks, its trailing comment cut."""
    text = (ROOT / page).read_text(encoding="utf-8")
    lines = [line for block in SHELL.findall(text) for line in block.splitlines()]
    return [re.split(r"\s+# ", line)[0].strip() for line in lines if line.strip()]


def argv(line: str) -> list[str]:
    """The arguments of `modernlm ...`, new tokens capped at 4 for the verbs that generate."""
    args = shlex.split(line)[1:]
    if args[0] in GENERATES:
        for flag in ("-n", "--max-new-tokens"):
            if flag in args:
                i = args.index(flag)
                del args[i : i + 2]
        args += ["-n", "4"]
    return args


def test_every_marked_line_is_on_its_page_and_every_readme_line_is_classified():
    for page, lines in RUNS.items():
        missing = [line for line in lines if line not in shell_lines(page)]
        assert not missing, f"{page} no longer shows {missing}: update RUNS in tests/test_doc_commands.py"
    readme = [line for line in shell_lines("README.md") if line.startswith("modernlm")]
    unclassified = [line for line in readme if line not in RUNS["README.md"] and line not in README_NOT_RUN]
    assert not unclassified, f"README lines neither run nor said to be skipped: {unclassified}"


@pytest.mark.parametrize("page, line", [(page, line) for page, lines in RUNS.items() for line in lines])
def test_the_command_runs_and_exits_0(page, line, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # what a command writes (runs/task) lands here
    monkeypatch.setattr("sys.stdin", io.StringIO("/help\n/exit\n"))  # `modernlm chat`: a command, then leave
    with one_thread():
        code = main(argv(line))
    out, err = capsys.readouterr()
    assert code == 0, f"{page}: `{line}` exited {code}: {err[-1500:]}"
    assert out or err
