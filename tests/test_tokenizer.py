"""Tokenisers (character-level and tokenizer.json loading) and token batching (pure Python + numpy)."""
import numpy as np
import pytest

from dipod_jax.lm import data
from dipod_jax.lm.tasks import get_task
from dipod_jax.lm.tokenizer import (
    char_tokenizer,
    llada_chat_prompt,
    load_hf_tokenizer,
    tokenizer_config,
    tokenizer_from_config,
)


def test_char_round_trip_and_tags():
    """decode(encode(s)) == s for printable text; each answer tag is one token; special ids are distinct."""
    tok = char_tokenizer()
    text = "<reasoning>\nx = (3+4)*2 ~ {ok}!\n</reasoning>\n<answer>14</answer>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(tok.encode("<answer>")) == 1 and len(tok.encode("</answer>")) == 1
    assert tok.encode("</answer>") != tok.encode("<answer>")
    assert len({tok.pad_id, tok.eos_id, tok.mask_id}) == 3
    assert max(ids) < tok.vocab_size


def test_char_special_ids_dropped_or_shown():
    """Pad/eos/mask are skipped by default and rendered as <pad>/<eos>/<mask> with skip_special=False."""
    tok = char_tokenizer()
    ids = tok.encode("12") + [tok.mask_id, tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "12"
    assert tok.decode(ids, skip_special=False) == "12<mask><eos><pad>"


def test_char_rejects_unknown_character():
    """A character outside the vocabulary raises ValueError naming it and its position."""
    with pytest.raises(ValueError, match=r"'\\t' at position 2"):
        char_tokenizer().encode("ab\tc")
    with pytest.raises(ValueError, match="id 9999"):
        char_tokenizer().decode([9999])


def _write_tiny_tokenizer_json(directory):
    """Trains a tiny byte-level BPE with LLaDA's special tokens and saves directory/tokenizer.json."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["the answer is 42", "solve the sudoku puzzle", "<answer>1234</answer>"] * 5,
                                  trainer)
    tokenizer.save(str(directory / "tokenizer.json"))


def test_hf_tokenizer_round_trip_and_config(tmp_path):
    """A tokenizer.json built here loads with LLaDA's special-token names; text round-trips; the config
    JSON rebuilds an equivalent tokenizer."""
    _write_tiny_tokenizer_json(tmp_path)
    tok = load_hf_tokenizer(str(tmp_path))
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2)
    text = "the sudoku answer is <answer>4321</answer>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_id, tok.mask_id]) == text
    rebuilt = tokenizer_from_config(tokenizer_config(tok))
    assert rebuilt.encode(text) == ids and rebuilt.vocab_size == tok.vocab_size
    assert "<|eot_id|>" in llada_chat_prompt("hi")


def test_hf_tokenizer_errors(tmp_path):
    """A missing tokenizer.json or special token raises ValueError naming the file or the argument."""
    with pytest.raises(ValueError, match="tokenizer.json does not exist"):
        load_hf_tokenizer(str(tmp_path))
    _write_tiny_tokenizer_json(tmp_path)
    with pytest.raises(ValueError, match="mask_token='<MASK>'"):
        load_hf_tokenizer(str(tmp_path), mask_token="<MASK>")


def test_char_config_round_trip_and_mismatch():
    """tokenizer_from_config(tokenizer_config(char)) gives the same ids; a wrong stored id is refused."""
    config = tokenizer_config(char_tokenizer())
    assert tokenizer_config(tokenizer_from_config(config)) == config
    with pytest.raises(ValueError, match="mask_id"):
        tokenizer_from_config(dict(config, mask_id=5))
    with pytest.raises(ValueError, match="'bpe'"):
        tokenizer_from_config(dict(config, kind="bpe"))


def test_encode_batch_layout_and_masks():
    """Prompts are left-padded to P, completions start at column P, followed by eos up to G; the masks mark
    exactly the documented regions; decoding the generation region gives the completions back."""
    tok = char_tokenizer()
    batch = data.encode_batch(tok, ["ab\n", "abcd\n"], ["<answer>1</answer>", "x"], prompt_length=6, gen_length=5)
    assert batch.tokens.shape == (2, 11) and batch.tokens.dtype == np.int32
    assert batch.tokens[0, 0] == tok.pad_id and batch.tokens[0, 3:6].tolist() == tok.encode("ab\n")
    assert batch.tokens[0, 6:].tolist() == tok.encode("<answer>1</answer>") + [tok.eos_id, tok.eos_id]
    assert batch.prompt_mask[0].tolist() == [False] * 3 + [True] * 3 + [False] * 5
    assert batch.attention_mask[0].tolist() == [False] * 3 + [True] * 8
    assert batch.completion_mask[0].tolist() == [False] * 6 + [True] * 4 + [False]
    assert batch.completion_mask[1].tolist() == [False] * 6 + [True] * 2 + [False] * 3
    assert batch.response_mask.sum() == 10 and batch.response_mask[:, 6:].all()
    assert data.decode_completions(tok, batch.tokens, 6) == ["<answer>1</answer>", "x"]
    recomputed = data.completion_mask_from_tokens(batch.tokens, 6, tok.eos_id)
    np.testing.assert_array_equal(recomputed, batch.completion_mask)


def test_encode_batch_for_generation_and_errors():
    """Without completions the generation region is all mask ids; over-long items name their index."""
    tok = char_tokenizer()
    batch = data.encode_batch(tok, ["12\n"], None, prompt_length=4, gen_length=3)
    assert (batch.tokens[0, 4:] == tok.mask_id).all() and not batch.completion_mask.any()
    with pytest.raises(ValueError, match="prompt 1 has 6 tokens"):
        data.encode_batch(tok, ["1", "12345\n"], None, prompt_length=4, gen_length=3)
    with pytest.raises(ValueError, match="completion 0 has 4 tokens"):
        data.encode_batch(tok, ["1"], ["abc"], prompt_length=4, gen_length=3)


def test_completion_mask_without_eos_runs_to_end():
    """A generated row with no eos has its whole generation region marked."""
    tokens = np.array([[7, 7, 5, 5, 5]])
    assert data.completion_mask_from_tokens(tokens, 2, eos_id=1).tolist() == [[False, False, True, True, True]]


def test_task_batch_sudoku_compact_lengths():
    """Compact Sudoku needs 17 prompt tokens and 19 generation tokens (tag, 16 digits, tag, eos)."""
    task, tok = get_task("sudoku"), char_tokenizer()
    items = task.generate(np.random.default_rng(0), 4)
    assert data.required_lengths(task, items, tok, "compact") == (17, 19)
    batch = data.task_batch(task, items, tok, "compact", 17, 19)
    assert data.decode_completions(tok, batch.tokens, 17) == [f"<answer>{i.solution}</answer>" for i in items]
