"""Tokenisers behind one small interface: a character-level one for the synthetic tasks, and LLaDA's.

Both are a `Tokenizer` record: `encode(text) -> list[int]`, `decode(ids) -> str` plus the ids of the special
tokens the masked-diffusion code needs (pad, eos, mask). `tokenizer_config` / `tokenizer_from_config` turn a
tokenizer into JSON and back, so a checkpoint directory can rebuild the tokenizer it was trained with.

Character tokeniser vocabulary (ids are fixed, so checkpoints stay valid):
  0 <pad>, 1 <eos>, 2 <mask>, then the answer-format tags "<answer>", "</answer>", "<reasoning>",
  "</reasoning>" as single tokens (so d1's answer format costs one token per tag), then "\n", then the
  printable ASCII characters ' ' .. '~'.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

PAD_TEXT, EOS_TEXT, MASK_TEXT = "<pad>", "<eos>", "<mask>"
CHAR_TAG_TOKENS = ("<answer>", "</answer>", "<reasoning>", "</reasoning>")
CHAR_PLAIN_CHARACTERS = ("\n",) + tuple(chr(code) for code in range(32, 127))

# LLaDA-8B-Instruct's special tokens (tokenizer_config.json of GSAI-ML/LLaDA-8B-Instruct).
LLADA_MASK_TOKEN = "<|mdm_mask|>"
LLADA_EOS_TOKEN = "<|eot_id|>"
LLADA_PAD_TOKEN = "<|endoftext|>"


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A text <-> id map with the special ids masked diffusion needs.

    encode: text -> list of ids (no special tokens added).
    decode: ids -> text; pad/eos/mask ids are dropped when skip_special=True.
    """

    kind: str
    vocab_size: int
    pad_id: int
    eos_id: int
    mask_id: int
    encode: Callable[[str], list[int]]
    decode: Callable[..., str]
    source_dir: str | None = None
    special_tokens: dict | None = None


def char_tokenizer() -> Tokenizer:
    """The fixed character-level tokeniser for Sudoku / Countdown (vocabulary in the module docstring)."""
    vocabulary = (PAD_TEXT, EOS_TEXT, MASK_TEXT) + CHAR_TAG_TOKENS + CHAR_PLAIN_CHARACTERS
    token_to_id = {token: index for index, token in enumerate(vocabulary)}
    # Longest tags first, so "</answer>" is never read as "<" + "/answer>".
    tags_longest_first = sorted(CHAR_TAG_TOKENS, key=len, reverse=True)
    special_ids = {0, 1, 2}

    def encode(text: str) -> list[int]:
        ids: list[int] = []
        position = 0
        while position < len(text):
            tag = next((t for t in tags_longest_first if text.startswith(t, position)), None)
            if tag is not None:
                ids.append(token_to_id[tag])
                position += len(tag)
                continue
            char = text[position]
            if char not in token_to_id:
                raise ValueError(
                    f"char_tokenizer.encode: character {char!r} at position {position} is not in the vocabulary "
                    "(printable ASCII and newline only)"
                )
            ids.append(token_to_id[char])
            position += 1
        return ids

    def decode(ids: Sequence[int], skip_special: bool = True) -> str:
        pieces = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < len(vocabulary):
                raise ValueError(f"char_tokenizer.decode: id {token_id} outside [0, {len(vocabulary)})")
            if skip_special and token_id in special_ids:
                continue
            pieces.append(vocabulary[token_id])
        return "".join(pieces)

    return Tokenizer(
        kind="char",
        vocab_size=len(vocabulary),
        pad_id=token_to_id[PAD_TEXT],
        eos_id=token_to_id[EOS_TEXT],
        mask_id=token_to_id[MASK_TEXT],
        encode=encode,
        decode=decode,
    )


def load_hf_tokenizer(
    directory: str,
    *,
    mask_token: str = LLADA_MASK_TOKEN,
    eos_token: str = LLADA_EOS_TOKEN,
    pad_token: str = LLADA_PAD_TOKEN,
) -> Tokenizer:
    """Loads `directory/tokenizer.json` with the `tokenizers` library (LLaDA's files, or any HF tokenizer).

    Args:
      directory: a local folder holding tokenizer.json (nothing is downloaded).
      mask_token, eos_token, pad_token: token strings whose ids become mask_id / eos_id / pad_id;
        the defaults are LLaDA-8B-Instruct's.
    Raises:
      ValueError naming the file when tokenizer.json is missing, or naming the token when one of the
      special tokens is not in its vocabulary.
    """
    import tokenizers

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"load_hf_tokenizer: {path} does not exist (directory={directory!r})")
    hf_tokenizer = tokenizers.Tokenizer.from_file(path)
    special_ids = {}
    for argument, token in (("mask_token", mask_token), ("eos_token", eos_token), ("pad_token", pad_token)):
        token_id = hf_tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"load_hf_tokenizer: {argument}={token!r} is not in the vocabulary of {path}")
        special_ids[argument] = token_id

    def encode(text: str) -> list[int]:
        return hf_tokenizer.encode(text, add_special_tokens=False).ids

    def decode(ids: Sequence[int], skip_special: bool = True) -> str:
        kept = [int(i) for i in ids]
        if skip_special:
            dropped = set(special_ids.values())
            kept = [i for i in kept if i not in dropped]
        return hf_tokenizer.decode(kept, skip_special_tokens=skip_special)

    return Tokenizer(
        kind="hf",
        vocab_size=hf_tokenizer.get_vocab_size(with_added_tokens=True),
        pad_id=special_ids["pad_token"],
        eos_id=special_ids["eos_token"],
        mask_id=special_ids["mask_token"],
        encode=encode,
        decode=decode,
        source_dir=os.path.abspath(directory),
        special_tokens={"mask_token": mask_token, "eos_token": eos_token, "pad_token": pad_token},
    )


def llada_chat_prompt(user_text: str) -> str:
    """Wraps `user_text` in LLaDA-8B-Instruct's chat template (a single user turn, assistant to answer)."""
    return (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{user_text}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """JSON-serialisable description from which `tokenizer_from_config` rebuilds `tokenizer`."""
    config = {
        "kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "eos_id": tokenizer.eos_id,
        "mask_id": tokenizer.mask_id,
    }
    if tokenizer.kind == "hf":
        config["source_dir"] = tokenizer.source_dir
        config["special_tokens"] = dict(tokenizer.special_tokens or {})
    return config


def tokenizer_from_config(config: dict) -> Tokenizer:
    """Inverse of `tokenizer_config`; raises ValueError when the config's ids disagree with the rebuilt one."""
    if config.get("kind") == "char":
        tokenizer = char_tokenizer()
    elif config.get("kind") == "hf":
        tokenizer = load_hf_tokenizer(config["source_dir"], **config["special_tokens"])
    else:
        raise ValueError(f"tokenizer_from_config: unknown tokenizer kind {config.get('kind')!r}")
    rebuilt = tokenizer_config(tokenizer)
    for key in ("vocab_size", "pad_id", "eos_id", "mask_id"):
        if rebuilt[key] != config[key]:
            raise ValueError(f"tokenizer_from_config: {key}={config[key]} but the rebuilt tokenizer has {rebuilt[key]}")
    return tokenizer
