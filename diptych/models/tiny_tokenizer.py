"""Byte-level BPE tokenizers trained here, for the random and micro checkpoints of every family.

No hub is reachable, so each checkpoint we write carries a tokenizer learnt from a small
corpus; families differ in their special tokens and wrapper class, not in how the BPE is
trained or how the special tokens' ids are checked.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

# Qwen2's (and Llama 3's) pre-tokenisation split: contractions, letter runs, single digits,
# punctuation, newlines, spaces, so a tiny tokenizer segments text the way the real one does.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def train_byte_level_bpe(corpus: Iterable[str], vocab_size: int, split_regex: str | None) -> Tokenizer:
    """A byte-level BPE learnt on ``corpus``; text is first split by ``split_regex``, or by GPT-2's if None."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    if split_regex is None:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe


def token_ids(tokenizer: object, tokens: Iterable[str]) -> dict[str, int]:
    """Each token's id, read back from the tokenizer (never assumed); a token without its own id is an error.

    A token missing from the vocabulary maps to None or the unknown id; either would corrupt the configs.
    """
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}  # type: ignore[attr-defined]
    for token, token_id in ids.items():
        if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != token:  # type: ignore[attr-defined]
            raise RuntimeError(f"token {token!r} did not get its own id (got {token_id!r})")
    return ids
