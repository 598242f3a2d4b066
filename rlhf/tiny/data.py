"""The toy datasets of the single-digit addition task (rlhf.tasks.arithmetic), the same for every family.

All 100 pairs ``a+b`` with single digits; a fixed 20 (chosen by the seed) are held out, and
every ``*_eval`` split uses exactly those 20 prompts. Rows hold raw text (prompts, completions,
preference pairs), so each family's tokenizer and chat template apply at load time.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlhf.tasks import arithmetic

N_EVAL_PROMPTS = 20
# Rejected completions per training prompt in pref_train.jsonl: wrong numbers and malformed strings.
N_PREF_WRONG_NUMBERS = 2
N_PREF_MALFORMED = 2
SPLITS = (
    "prompts_train", "prompts_eval", "prompts_train_messages", "prompts_eval_messages",
    "sft_train", "sft_eval", "pref_train", "pref_eval",
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen"]


def write_data(data_dir: Path, seed: int) -> None:
    """Write every split in ``SPLITS`` as ``data_dir/<split>.jsonl``."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    eval_pairs = sorted(rng.sample(pairs, N_EVAL_PROMPTS))
    train_pairs = [p for p in pairs if p not in set(eval_pairs)]

    def prompt_rows(ps):
        return [{"prompt": arithmetic.make_prompt(a, b)} for a, b in ps]

    def message_rows(ps):
        return [{"messages": [{"role": "user", "content": arithmetic.make_prompt(a, b)}]} for a, b in ps]

    def sft_rows(ps):
        return [{"prompt": arithmetic.make_prompt(a, b), "completion": arithmetic.answer(a, b)} for a, b in ps]

    def pref_rows(ps, n_wrong, n_malformed):
        rows = []
        for a, b in ps:
            prompt, good = arithmetic.make_prompt(a, b), arithmetic.answer(a, b)
            rejected = [_wrong_number(rng, a + b) for _ in range(n_wrong)]
            rejected += [_malformed(rng, a + b) for _ in range(n_malformed)]
            rows += [{"prompt": prompt, "chosen": good, "rejected": r} for r in rejected]
        return rows

    data_dir.mkdir(parents=True)
    splits = {
        "prompts_train": prompt_rows(train_pairs),
        "prompts_eval": prompt_rows(eval_pairs),
        "prompts_train_messages": message_rows(train_pairs),
        "prompts_eval_messages": message_rows(eval_pairs),
        "sft_train": sft_rows(train_pairs),
        "sft_eval": sft_rows(eval_pairs),
        "pref_train": pref_rows(train_pairs, N_PREF_WRONG_NUMBERS, N_PREF_MALFORMED),
        "pref_eval": pref_rows(eval_pairs, 1, 1),
    }
    for name, rows in splits.items():
        with open(data_dir / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def _wrong_number(rng: random.Random, total: int) -> str:
    """A wrong sum: usually off by 1-3 (a near miss), sometimes any other number 0-18."""
    if rng.random() < 0.5:
        candidates = [total + d for d in (-3, -2, -1, 1, 2, 3) if 0 <= total + d <= 18]
    else:
        candidates = [n for n in range(19) if n != total]
    return str(rng.choice(candidates))


def _malformed(rng: random.Random, total: int) -> str:
    """A malformed answer with letters: a number word, the sum with junk around it, or letters."""
    kind = rng.randrange(3)
    if kind == 0:
        return NUMBER_WORDS[total]
    if kind == 1:
        junk = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 3)))
        return f"{total}{junk}" if rng.random() < 0.5 else f"{junk}{total}"
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 6)))
