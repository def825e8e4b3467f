"""GSM8K from a local JSONL file (the public data is not shipped), prompts and d1's reward.

Details: docs/modules.md, section dipod_jax.lm.tasks.gsm8k.
"""
from __future__ import annotations

import dataclasses
import re

from dipod_jax.lm.tasks.files import jsonl_objects, read_task_file

SAMPLE_FILE = "gsm8k_sample.jsonl"
# d1 tests the layouts with lazy regexes (strict: r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$",
# soft: r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", both DOTALL, via re.match), which backtrack
# quadratically on repeated tags; `_is_strict_format` and `_is_soft_format` decide the same in linear time.
_STRICT_OPEN, _STRICT_MIDDLE = "<reasoning>\n", "\n</reasoning>\n<answer>\n"
_STRICT_ENDINGS = ("\n</answer>\n", "\n</answer>\n\n")  # '$' also matches before one final newline
_SOFT_OPEN = "<reasoning>"
# Possessive \s*+ never gives whitespace back ('<' is not whitespace, so nothing is lost), and the pattern
# starts with a literal, so a search is one left-to-right pass.
_SOFT_MIDDLE = re.compile(r"</reasoning>\s*+<answer>")


@dataclasses.dataclass(frozen=True)
class Gsm8kItem:
    """`question`, the full reference `solution` text, and the final `answer` (the text after '####')."""

    question: str
    solution: str
    answer: str


def load_jsonl(name_or_path: str = SAMPLE_FILE) -> list[Gsm8kItem]:
    """Reads GSM8K rows from `name_or_path` (a filesystem path, or the bundled sample's file name; UTF-8).

    Raises ValueError naming the file and line for bytes that are not UTF-8, invalid JSON, missing keys, or an
    answer without '####' or with nothing after it, and naming the file when it holds no rows.
    """
    handle, path = read_task_file(name_or_path, (SAMPLE_FILE,))
    items = []
    for line_number, row in jsonl_objects(handle, path):
        if not (isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)):
            raise ValueError(f"{path}:{line_number}: expected string fields 'question' and 'answer'")
        if "####" not in row["answer"]:
            raise ValueError(f"{path}:{line_number}: 'answer' has no '####' final-answer marker")
        final = row["answer"].split("####")[-1].strip()
        if not final:
            raise ValueError(f"{path}:{line_number}: 'answer' has nothing after its '####' marker (an empty "
                             "completion would match it)")
        items.append(Gsm8kItem(question=row["question"], solution=row["answer"], answer=final))
    if not items:
        raise ValueError(f"{path}: no rows (the file is empty or blank)")
    return items


def prompt_text(item: Gsm8kItem, template: str = "d1") -> str:
    """The d1-style prompt: the format instruction (our wording) and the question."""
    if template != "d1":
        raise ValueError(f"gsm8k.prompt_text: unknown template {template!r} (only 'd1')")
    return (
        "Answer the math question. Write your working inside <reasoning> </reasoning> tags and then only "
        "the final number inside <answer> </answer> tags, in this layout:\n"
        "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n"
        f"{item.question}\n"
    )


def target_completion(item: Gsm8kItem, template: str = "d1") -> str:
    """The reference solution in d1's format: its working as reasoning, its final number as the answer."""
    if template != "d1":
        raise ValueError(f"gsm8k.target_completion: unknown template {template!r} (only 'd1')")
    working = item.solution.split("####")[0].strip()
    return f"<reasoning>\n{working}\n</reasoning>\n<answer>\n{item.answer}\n</answer>\n"


def extract_answer(completion: str) -> str:
    """Text between the last "<answer>" and the following "</answer>", stripped (d1's extraction,
    `completion.split("<answer>")[-1].split("</answer>")[0].strip()`, without building the split lists)."""
    opening = completion.rfind("<answer>")
    start = opening + len("<answer>") if opening >= 0 else 0
    close = completion.find("</answer>", start)
    return completion[start:close if close >= 0 else len(completion)].strip()


def _is_strict_format(completion: str) -> bool:
    r"""d1's strict layout: "<reasoning>\n" A "\n</reasoning>\n<answer>\n" B "\n</answer>\n" with any A and B,
    and optionally one more final newline."""
    if not completion.startswith(_STRICT_OPEN):
        return False
    for ending in _STRICT_ENDINGS:
        if completion.endswith(ending):
            middle_end = len(completion) - len(ending)
            return completion.find(_STRICT_MIDDLE, len(_STRICT_OPEN), middle_end) >= 0
    return False


def _is_soft_format(completion: str) -> bool:
    """d1's soft layout: the completion starts with "<reasoning>", later "</reasoning>", optional whitespace
    and "<answer>", and somewhere after that "</answer>". The earliest "</reasoning>...<answer>" leaves the
    most room for the close, so it alone decides."""
    if not completion.startswith(_SOFT_OPEN):
        return False
    middle = _SOFT_MIDDLE.search(completion, len(_SOFT_OPEN))
    return middle is not None and completion.find("</answer>", middle.end()) >= 0


def _normalise(number_text: str) -> str:
    return number_text.replace(",", "").lstrip("$").strip()


def _xml_count(completion: str) -> float:
    score = 0.0
    if completion.count("<reasoning>\n") == 1:
        score += 0.125
    if completion.count("\n</reasoning>\n") == 1:
        score += 0.125
    if completion.count("\n<answer>\n") == 1:
        score += 0.125 - 0.001 * len(completion.split("\n</answer>\n")[-1])
    if completion.count("\n</answer>") == 1:
        score += 0.125 - 0.001 * (len(completion.split("\n</answer>")[-1]) - 1)
    return score


def reward_components(completion: str, item: Gsm8kItem) -> dict[str, float]:
    """The five d1 reward terms for one completion (module docstring); `reward` is their sum."""
    answer = extract_answer(completion)
    return {
        "correctness": 2.0 if _normalise(answer) == _normalise(item.answer) else 0.0,
        "integer": 0.5 if answer.isdigit() else 0.0,
        "strict_format": 0.5 if _is_strict_format(completion) else 0.0,
        "soft_format": 0.5 if _is_soft_format(completion) else 0.0,
        "xml_count": _xml_count(completion),
    }


def reward(completion: str, item: Gsm8kItem) -> float:
    """Total d1 GSM8K reward (at most 4.0 for a perfectly formatted correct integer answer)."""
    return float(sum(reward_components(completion, item).values()))
