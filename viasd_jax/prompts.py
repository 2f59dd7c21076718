"""Prompts (strings or token ids) -> a padded, length-bucketed token array."""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_BUCKET = 16


def bucket(length: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest power of two >= length (and >= minimum): the padded prompt width."""
    return max(minimum, 1 << max(0, int(length) - 1).bit_length())


def round_up(x: int, multiple: int) -> int:
    return -(-int(x) // multiple) * multiple


def _is_ids(p) -> bool:
    return isinstance(p, (list, tuple, np.ndarray)) and all(isinstance(t, (int, np.integer)) for t in p)


def normalize(prompts) -> list:
    """One prompt or a list of prompts -> a list (each a string or a list of ids)."""
    if isinstance(prompts, str) or (_is_ids(prompts) and len(prompts) and not isinstance(prompts[0], (list, tuple))):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give a string, a list of token ids, or a list of either")
    return prompts


def encode(model, prompts: Sequence, chat_template: bool = True) -> list[list[int]]:
    """Token ids per prompt. Strings go through the chat template when the tokenizer
    has one and `chat_template` is set; an empty prompt becomes the BOS token."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            tok = model.tokenizer
            if tok is None:
                raise ValueError("string prompts need a tokenizer; this model has none: pass token ids instead")
            if chat_template and getattr(tok, "chat_template", None):
                text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False)
                ids = tok(text, add_special_tokens=False).input_ids
            else:
                ids = tok(p).input_ids
        elif _is_ids(p):
            ids = [int(t) for t in p]
        else:
            raise ValueError(f"prompt {i} is neither a string nor a list of token ids: {type(p).__name__}")
        if not ids:
            if model.bos_id is None:
                raise ValueError(f"prompt {i} is empty and the model has no BOS token to start from")
            ids = [model.bos_id]
        bad = [t for t in ids if not 0 <= t < model.config.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {model.config.vocab_size})")
        out.append(ids)
    return out


def pad(ids: list[list[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`[B, width]` int32 right-padded with `pad_id`, and the lengths `[B]`."""
    arr = np.full((len(ids), width), pad_id, np.int32)
    for i, row in enumerate(ids):
        arr[i, : len(row)] = row
    return arr, np.array([len(r) for r in ids], np.int32)
