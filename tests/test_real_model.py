"""Real Qwen2.5-Coder-1.5B: our float32 forward against Hugging Face float32.

Not run in CI (`--real` enables it; the pair is downloaded and converted on first
use). Prints, and writes to runs/real_parity.json, the per-token KL and top-1
agreement of teacher-forced logits on the dev prompts, and whether greedy texts
match for the first 32 tokens.
"""

import json
import os

import numpy as np
import pytest

import viasd_jax
from viasd_jax import fetch

pytestmark = pytest.mark.real
DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "prompts-dev.jsonl")
TOKENS = 32


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_real_target_matches_hf_float32():
    import torch
    import transformers

    ours = viasd_jax.load(fetch.DEFAULT_TARGET)
    hf = transformers.AutoModelForCausalLM.from_pretrained(fetch.ensure_hf(fetch.DEFAULT_TARGET),
                                                           dtype=torch.float32).eval()
    rows = [json.loads(line) for line in open(DEV)]
    ids = viasd_jax.prompts.encode(ours, [r["prompt"] for r in rows])
    mine = viasd_jax.generate(ours, ids, max_new_tokens=TOKENS).tokens  # one batch of all prompts
    report = []
    for row, prompt, got in zip(rows, ids, mine):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=TOKENS, do_sample=False, temperature=None,
                              top_p=None, top_k=None, eos_token_id=list(ours.eos_ids), pad_token_id=ours.pad_id)
            ref = out[0, len(prompt):].tolist()
            seq = prompt + ref
            hf_logits = hf(torch.tensor([seq])).logits[0, len(prompt) - 1:-1].float().numpy()
        our_logits = np.asarray(viasd_jax.score(ours, [seq]))[0, len(prompt) - 1:-1]
        p_log, q_log = _log_softmax(hf_logits.astype(np.float64)), _log_softmax(our_logits.astype(np.float64))
        kl = (np.exp(p_log) * (p_log - q_log)).sum(-1)
        top2 = np.sort(hf_logits, -1)[:, -2:]
        report.append({"id": row["id"], "task": row["task"], "max_kl": float(kl.max()), "mean_kl": float(kl.mean()),
                       "top1": float((hf_logits.argmax(-1) == our_logits.argmax(-1)).mean()),
                       "greedy_match": got == ref, "min_margin": float((top2[:, 1] - top2[:, 0]).min()),
                       "max_abs_logit_diff": float(np.abs(hf_logits - our_logits).max())})
    summary = {"prompts": len(report), "max_kl": max(r["max_kl"] for r in report),
               "top1": float(np.mean([r["top1"] for r in report])),
               "greedy_match": sum(r["greedy_match"] for r in report),
               "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in report)}
    os.makedirs("runs", exist_ok=True)
    with open("runs/real_parity.json", "w") as f:
        json.dump({"summary": summary, "prompts": report}, f, indent=1)
    print(json.dumps(summary, indent=1))
    assert summary["max_kl"] < 1e-3 and summary["top1"] > 0.999
    assert summary["greedy_match"] == len(report), [r["id"] for r in report if not r["greedy_match"]]


def test_real_gguf_codes_are_the_float32_model():
    """The real target's GGUF codes (`quantize="gguf"`) decode the float32 model exactly:
    the same greedy tokens on one prompt per task, and the same logits to the bit over a
    whole prompt and answer (prefill's many-row path)."""
    dense = viasd_jax.load(fetch.DEFAULT_TARGET)
    codes = viasd_jax.load(fetch.DEFAULT_TARGET, quantize="gguf")
    rows = [json.loads(line) for line in open(DEV)]
    rows = [next(r for r in rows if r["task"] == task) for task in dict.fromkeys(r["task"] for r in rows)]
    ids = viasd_jax.prompts.encode(dense, [r["prompt"] for r in rows])
    want = viasd_jax.generate(dense, ids, max_new_tokens=TOKENS).tokens
    got = viasd_jax.generate(codes, ids, max_new_tokens=TOKENS).tokens
    assert got == want
    seq = [ids[0] + want[0]]
    np.testing.assert_array_equal(np.asarray(viasd_jax.score(codes, seq)).view(np.uint32),
                                  np.asarray(viasd_jax.score(dense, seq)).view(np.uint32))
