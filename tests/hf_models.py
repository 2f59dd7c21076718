"""Tiny random Hugging Face models of every supported family, saved to a directory."""

from __future__ import annotations

import os

FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gemma2")

_COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def hf_config(family: str, **overrides):
    import transformers

    kw = dict(_COMMON)
    if family == "llama":
        cls = transformers.LlamaConfig
        kw.update(head_dim=8, tie_word_embeddings=True)  # SmolLM2-like: tied head
    elif family == "qwen2":
        cls = transformers.Qwen2Config
        kw.update(rope_theta=1e6)
    elif family == "mistral":
        cls = transformers.MistralConfig
        kw.update(head_dim=8, sliding_window=6)  # a window shorter than the tests' sequences
    elif family == "gemma":
        cls = transformers.GemmaConfig
        kw.update(head_dim=8, hidden_activation="gelu_pytorch_tanh")
    elif family == "gemma2":
        cls = transformers.Gemma2Config
        kw.update(head_dim=8, sliding_window=5, query_pre_attn_scalar=8, attn_logit_softcapping=50.0,
                  final_logit_softcapping=30.0)
    else:
        raise ValueError(family)
    kw.update(overrides)
    return cls(**kw)


def make_hf_model(family: str, directory: str, seed: int = 0, dtype="float32", **overrides):
    """Save a random tiny `family` model to `directory`; returns the torch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = hf_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    # HF's init (std 0.02) leaves the residual stream dominated by the embedding, so tiny
    # models just repeat their input; larger layer weights give varied continuations.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed" in name:
                p.mul_(2.0)
            elif p.dim() >= 2:
                p.mul_(16.0)
            elif "norm" in name:
                p.normal_(0.0 if family.startswith("gemma") else 1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    model = model.to(getattr(torch, dtype)).eval()
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    return model


WORDS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"] + [f"w{i}" for i in range(5, 96)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(directory: str):
    """A whitespace word-level tokenizer over the tiny vocab, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast
