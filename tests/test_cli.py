"""The CLI as a user runs it: `modernlm generate` and `modernlm chat` on the embedded model, and user mistakes
reported in one line (exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import modernlm
from modernlm.cli.__main__ import main
from modernlm.generation import generate


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """The console command in a fresh interpreter, as a user would start it (shares the tests' GGUF cache)."""
    return subprocess.run(
        [sys.executable, "-m", "modernlm", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_generate_prints_the_greedy_continuation(capsys):
    prompt = "The three primary colours are"
    # the embedded GGUF has no generation_config.json: its defaults sample (the fallback), so greedy is asked for
    assert main(["generate", "--prompt", prompt, "-n", "12", "--ignore-eos", "-t", "0"]) == 0
    out, err = capsys.readouterr()
    tok = modernlm.load_tokenizer()
    expected = tok.decode(generate(modernlm.load_model(), tok.encode(prompt), 12, temperature=0.0)[0])
    assert out == expected + "\n"
    assert "tokens/s" in err


def test_generate_chat_stream(capsys):
    question = "What is the capital of France?"
    assert main(["generate", "--chat", "--stream", "--prompt", question, "-n", "16", "-t", "0"]) == 0
    out, _ = capsys.readouterr()
    assert "Paris" in out


def test_chat_answers_two_turns_from_stdin_and_reuses_the_cache():
    done = run_cli("chat", "-n", "24", "--temperature", "0", stdin="What is 2+2?\nAnd the capital of France?\n")
    assert done.returncode == 0, done.stderr
    replies = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(replies) >= 2 and "4" in replies[0] and "Paris" in done.stdout
    stats = [line for line in done.stderr.splitlines() if "reused from the cache" in line]
    assert len(stats) == 2 and " 0 reused" in stats[0] and " 0 reused" not in stats[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--prompt", ""], "prompt is empty"),
        (["generate", "--prompt", "hi", "--top-p", "1.5"], "top_p"),
        (["generate", "--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["generate", "--prompt", "hi", "-n", "0"], "max_new_tokens"),
        (["generate", "--prompt", "hi", "--stop", ""], "stop strings"),
        (["generate", "--prompt", "hi", "--model", "/no/such/model.gguf"], "no such file"),
    ],
)
def test_user_mistakes_are_one_line_errors(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---- one table of shared flags -------------------------------------------------------------------------------------
def test_old_spellings_are_aliases_that_say_so(capsys, caplog):
    import json

    assert main(["align", "dpo", "--max-steps", "3", "--print-config"]) == 0
    new = json.loads(capsys.readouterr().out)
    with caplog.at_level("WARNING", logger="modernlm"):
        assert main(["align", "dpo", "--steps", "3", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == new and new["steps"] == 3
    assert "--steps is the old spelling of --max-steps" in caplog.text
    assert main(["memory", "llama-tiny", "--targets", "q_proj,v_proj", "--r", "4", "--json"]) == 0
    memory = json.loads(capsys.readouterr().out)
    assert main(["memory", "llama-tiny", "--lora", "q_proj,v_proj", "--lora-r", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == memory


def test_shared_flags_mean_the_same_in_every_verb():
    """A flag of the shared table has one help text (its meaning) wherever a verb offers it."""
    from modernlm.cli.__main__ import build_parser
    from modernlm.cli.common import SHARED

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    seen = {}
    for verb in ("finetune", "align"):
        for action in verbs[verb]._actions:
            for flag in action.option_strings:
                if flag in SHARED:
                    seen.setdefault(flag, set()).add(action.help.split(" (default")[0])
    assert seen and all(len(helps) == 1 for helps in seen.values()), seen
    for verb in ("train", "finetune", "align"):
        assert "--max-steps" in verbs[verb]._option_string_actions, verb


@pytest.mark.parametrize("args", [["serve", "--compile"], ["eval", "perplexity", "--compile"]])
def test_flags_a_verb_does_not_use_are_not_offered(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "unrecognized arguments: --compile" in capsys.readouterr().err


def test_the_default_targets_shown_in_help_can_be_typed(capsys):
    import json

    from modernlm.cli.common import TARGETS

    assert main(["finetune", "--targets", TARGETS, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == TARGETS.split(",")


def _options(parser, path=()):
    """(verb path, option) for every option of every verb and sub-verb."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings:
            yield path, action


def test_every_default_shown_in_help_can_be_typed_back():
    """Each `(default: X)` in a verb's --help is X as a user types it: no Python repr ([...], None, True), and a
    value that is not a description ("the model's max_seq_len", "--seq-len") parses with the flag's own type and
    choices back to the flag's default. (`--targets`'s "(default q,k,v,o_proj)" was once refused when typed.)"""
    import argparse
    import re

    from modernlm.cli.__main__ import build_parser

    checked = 0
    for path, action in _options(build_parser()):
        for text in re.findall(r"\bdefault:? ([^;)]*)", action.help or ""):
            where = f"modernlm {' '.join(path)} {action.option_strings[-1]}: (default: {text})"
            text = text.strip().rstrip(",.")
            assert not re.match(r"^([\[{(]|None$|True$|False$)", text), f"{where} is a Python repr"
            if isinstance(action, argparse.BooleanOptionalAction):
                assert text in action.option_strings, where
                continue
            tokens = text.split() if action.nargs in ("+", "*") or isinstance(action.nargs, int) else [text]
            if text.startswith(("--", "$")) or (len(tokens) == 1 and " " in text):
                continue  # a description: another flag's value, an environment variable, words
            try:
                values = [action.type(t) if action.type else t for t in tokens]
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                assert re.match(r"^[a-z]+'?s?$", text), f"{where} cannot be typed back"  # one word: "fixed"
                continue
            if action.choices is not None:
                assert all(v in action.choices for v in values), where
            value = values if len(tokens) > 1 or action.nargs in ("+", "*") else values[0]
            if action.default is not None:
                assert value == action.default, f"{where}, but the flag's default is {action.default!r}"
            checked += 1
    assert checked > 80  # every verb's typed defaults, not a handful
