"""The lm-evaluation-harness adapter against lm-eval's own `hf` model on the same weights, offline: three local tasks
(multiple choice, rolling log-likelihood, generation) defined by YAML over JSONL files written here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

TEXT = (
    "the cat sat on the mat. the dog ate the bone. a bird sang in the tree. "
    "question: what did the cat do? answer: sat on the mat.\n"
) * 20
TASKS = ("tiny_mc", "tiny_rolling", "tiny_gen")
MAX_LENGTH = 48  # small enough that the long document spans several rolling windows


def _write_tasks(root: Path) -> Path:
    """tiny_mc (multiple choice, acc), tiny_rolling (perplexity), tiny_gen (greedy until newline, exact match)."""
    rows = {
        "mc": [{"q": "the cat sat on the", "choices": [" mat.", " tree.", " bone."], "answer": i % 3} for i in range(6)]
        + [{"q": "a bird sang in", "choices": [" the tree.", " the mat"], "answer": 0}],
        "rolling": [{"text": TEXT[:300]}, {"text": "the dog ate the bone."}, {"text": TEXT[:900]}],
        "gen": [{"q": "question: what did the cat do? answer:", "a": " sat on the mat."}, {"q": "the", "a": " dog"}],
    }
    for name, docs in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = f"dataset_path: json\ndataset_kwargs:\n  cache_dir: {root / 'cache'}\n  data_files:\n    test: "
    (root / "mc.yaml").write_text(
        f"task: tiny_mc\n{common}{root / 'mc.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (root / "rolling.yaml").write_text(
        f"task: tiny_rolling\n{common}{root / 'rolling.jsonl'}\ntest_split: test\n"
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (root / "gen.yaml").write_text(
        f"task: tiny_gen\n{common}{root / 'gen.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 12\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_chat_dir):
    root = tmp_path_factory.mktemp("harness")
    model = tiny_chat_dir(TEXT, max_seq_len=128)
    (root / "tasks").mkdir()
    return model, _write_tasks(root / "tasks")


def _evaluate(model: str, model_args: dict, tasks_dir: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import modernlm.eval.harness  # noqa: F401  registers "modernlm"

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),  # not 13k built-in YAMLs
        batch_size=3,
        device="cpu",
        log_samples=True,
    )


def _by_doc(results: dict, task: str) -> list:
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_modernlm_agrees_with_the_hf_model_on_local_tasks(setup, monkeypatch):
    import lm_eval.evaluator

    # lm-eval's environment report runs torch's collect_env (subprocesses: seconds of waiting); not what is tested
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
    model_dir, tasks_dir = setup
    ours = _evaluate("modernlm", {"source": str(model_dir), "max_length": MAX_LENGTH}, tasks_dir)
    hf = _evaluate("hf", {"pretrained": str(model_dir), "dtype": "float32", "max_length": MAX_LENGTH}, tasks_dir)
    for task in TASKS:
        a, b = _by_doc(ours, task), _by_doc(hf, task)
        assert len(a) == len(b) > 0
        for doc_a, doc_b in zip(a, b, strict=True):
            for req_a, req_b in zip(doc_a, doc_b, strict=True):
                if task == "tiny_gen":
                    assert req_a == req_b  # the same greedy text, cut at the same stop string
                elif task == "tiny_mc":  # [(log-likelihood, is_greedy)] per choice
                    assert req_a[0][0] == pytest.approx(req_b[0][0], abs=1e-4) and req_a[0][1] == req_b[0][1]
                else:  # [log-likelihood of the whole document]
                    assert req_a[0] == pytest.approx(req_b[0], abs=1e-3)
    assert ours["results"]["tiny_mc"]["acc,none"] == hf["results"]["tiny_mc"]["acc,none"]
    ppl = ours["results"]["tiny_rolling"]["word_perplexity,none"]
    assert math.isfinite(ppl) and ppl == pytest.approx(hf["results"]["tiny_rolling"]["word_perplexity,none"], 1e-4)
    gens = [r[0][0] for r in _by_doc(ours, "tiny_gen")]
    assert all(isinstance(g, str) and "\n" not in g and "." not in g for g in gens)


def test_bad_model_arguments_are_refused(setup):
    from modernlm.eval.harness import HarnessArgumentError, ModernLM

    with pytest.raises(HarnessArgumentError, match="unknown model argument"):
        ModernLM(source=str(setup[0]), pretrained="x")
    with pytest.raises(HarnessArgumentError, match="batch_size"):
        ModernLM(source=str(setup[0]), batch_size="auto")


def test_model_args_win_over_lm_evals_own_options(setup):
    """lm-eval's command line passes its --batch_size (default 1) and --device beside --model_args; the README's
    `--model_args source=...,batch_size=8` once failed with "got multiple values for keyword argument 'batch_size'"."""
    from modernlm.eval.harness import ModernLM

    cli = {"batch_size": 1, "max_batch_size": None, "device": "cpu"}
    lm = ModernLM.create_from_arg_string(f"source={setup[0]},batch_size=8,max_length={MAX_LENGTH}", cli)
    assert lm.batch_size == 8 and lm.max_length == MAX_LENGTH
    lm = ModernLM.create_from_arg_obj({"source": str(setup[0])}, {"batch_size": 3, "device": None})
    assert lm.batch_size == 3  # lm-eval's own option when --model_args does not name it


@pytest.mark.slow
@pytest.mark.parametrize("entry", [["modernlm.eval.harness"], ["modernlm", "eval", "harness"]])
def test_command_line_runs_the_modernlm_model(setup, tmp_path, entry):
    """`python -m modernlm.eval.harness` and `modernlm eval harness` are lm-eval's own command line with the model
    registered (lm-eval indexes its built-in tasks here too: tens of seconds)."""
    model_dir, tasks_dir = setup
    args = ["--model", "modernlm", "--model_args", f"source={model_dir},max_length={MAX_LENGTH}", "--tasks", "tiny_mc",
            "--include_path", str(tasks_dir), "--output_path", str(tmp_path), "--batch_size", "2"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", *entry, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert 0 <= results["results"]["tiny_mc"]["acc,none"] <= 1
