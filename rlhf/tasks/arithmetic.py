"""Toy verifiable task: single-digit addition ("3+4=" -> "7").

Used by the CPU demos and tests. Prompts are raw strings like ``"3+4="``; the
same prompt may also arrive wrapped in a chat template
(``"<|user|>3+4=</s><|assistant|>"``), so :func:`parse_prompt` looks for the last
``d+d=`` in the string.

The rule reward :func:`score` (config reference ``"rlhf.tasks.arithmetic:score"``)
is deliberately dense, so that policy-gradient training of a randomly
initialised tiny policy shows a clear rise within ~20 steps. With
``s = response.strip()``:

=========================================  =============================================
case                                       reward
=========================================  =============================================
``s`` is exactly the answer                ``1.0``
``s`` is a 1-2 digit number, but wrong     ``0.4``
``s`` is empty                             ``0.0``
anything else                              ``(0.15 * has_digit + 0.05 * first_is_digit
                                           + 0.1 * digit_frac) * min(1, 4 / len(s))``
                                           (at most 0.3)
=========================================  =============================================

where ``has_digit`` is 1 if ``s`` contains a digit, ``first_is_digit`` is 1 if
it starts with one, and ``digit_frac`` is the fraction of its characters that
are digits (ASCII 0-9 only). The length factor makes every partial credit
prefer short responses, which is what pushes a policy towards stopping.

The rungs are ordered: any non-number scores below any wrong number, which
scores below the answer. Uniformly random 8-character strings over the tiny
tokenizer's alphabet average about 0.06 (checked in
``tests/test_task_arithmetic.py``). Measured with REINFORCE on the tiny random
policy (64 samples a step, 8 tokens, Adam 1e-3), the mean reward went 0.055 ->
0.14 by step 20 and 0.42 by step 50, with responses shrinking from 8 characters
to 2-3 and the first correct answers appearing around step 30.
"""

from __future__ import annotations

import re

_PROMPT_RE = re.compile(r"([0-9])\+([0-9])=")
_NUMBER_RE = re.compile(r"[0-9]{1,2}")
_DIGITS = frozenset("0123456789")

CORRECT_REWARD = 1.0
WRONG_NUMBER_REWARD = 0.4


def make_prompt(a: int, b: int) -> str:
    """The raw prompt for ``a + b``, e.g. ``make_prompt(3, 4) == "3+4="``."""
    _check_digit(a)
    _check_digit(b)
    return f"{a}+{b}="


def parse_prompt(prompt: str) -> tuple[int, int]:
    """``(a, b)`` from a raw or chat-templated prompt (the last ``d+d=`` in it)."""
    matches = _PROMPT_RE.findall(prompt)
    if not matches:
        raise ValueError(f"no single-digit addition 'd+d=' found in prompt {prompt!r}")
    a, b = matches[-1]
    return int(a), int(b)


def answer(a: int, b: int) -> str:
    """The correct completion for ``a + b``, e.g. ``answer(3, 4) == "7"``."""
    _check_digit(a)
    _check_digit(b)
    return str(a + b)


def is_correct(prompt: str, response: str) -> bool:
    """Whether the response, stripped of surrounding whitespace, is exactly the answer."""
    return response.strip() == answer(*parse_prompt(prompt))


def score(prompt: str, response: str) -> float:
    """Dense rule reward in ``[0, 1]``; the rule is in this module's docstring."""
    s = response.strip()
    if s == answer(*parse_prompt(prompt)):
        return CORRECT_REWARD
    if _NUMBER_RE.fullmatch(s):
        return WRONG_NUMBER_REWARD
    if not s:
        return 0.0
    n_digits = sum(c in _DIGITS for c in s)
    has_digit = 1.0 if n_digits else 0.0
    first_is_digit = 1.0 if s[0] in _DIGITS else 0.0
    digit_frac = n_digits / len(s)
    return (0.15 * has_digit + 0.05 * first_is_digit + 0.1 * digit_frac) * min(1.0, 4.0 / len(s))


def _check_digit(x: int) -> None:
    if not (isinstance(x, int) and 0 <= x <= 9):
        raise ValueError(f"expected a single digit 0-9, got {x!r}")
