"""The one prompt check for every path that reads text (training and evaluation prompts, `ddrl
sample`'s prompts, Diffusion-DPO's captions): words the model knows (the built-in models read a
fixed vocabulary) and a length it reads whole.

How long a prompt may be: what the model's longest-reading text encoder takes (CLIP 77 tokens;
SD3's and FLUX's T5 `max_sequence_length`). Longer prompts are refused rather than truncated: a
reward reads the whole prompt, so a policy that saw only its start would be scored against words it
never read (diffusers truncates them with a warning instead)."""

from __future__ import annotations

from typing import Sequence

from ..prompts import shown

CHARS_PER_TOKEN_LIMIT = 50  # a prompt this many characters per allowed token is refused unread


def prompt_reader(policy) -> tuple[object, int]:
    """(tokenizer, token limit) of the text encoder that reads the most tokens."""
    pipe = policy.pipe
    limit = getattr(policy, "max_sequence_length", None)
    for name in ("tokenizer_3", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is not None and "T5" in type(tok).__name__ and limit:
            return tok, limit
    tok = pipe.tokenizer
    return tok, tok.model_max_length


def check_prompt_lengths(policy, prompts: Sequence[str], source: str) -> None:
    """Refuse, with a ValueError naming `source` and the prompt, any prompt longer than the model
    reads."""
    tok, limit = prompt_reader(policy)
    for i, p in enumerate(prompts):
        which = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
        if len(p) > CHARS_PER_TOKEN_LIMIT * limit:
            raise ValueError(f"{source}: {which} ({shown(p)}) has {len(p)} characters; the text encoder "
                             f"reads at most {limit} tokens")
        n = len(tok(p, truncation=False).input_ids)
        if n > limit:
            raise ValueError(f"{source}: {which} ({shown(p)}) is {n} tokens; the text encoder reads at most "
                             f"{limit} (the rest would be cut off while the reward reads it all). Shorten it")


def check_prompts(policy, prompts: Sequence[str], source: str) -> None:
    """Refuse, with a ValueError naming `source` and the prompt, a prompt with words outside the
    model's vocabulary (when it has one) or longer than it reads."""
    check = getattr(policy, "prompt_check", None)
    if check is not None:
        try:
            check(prompts)
        except ValueError as e:
            raise type(e)(f"{source}: {e}") from None
    check_prompt_lengths(policy, prompts, source)
