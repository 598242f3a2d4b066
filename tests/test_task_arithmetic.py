import random

import pytest

from rlhf.tasks import arithmetic
from rlhf.tasks.arithmetic import answer, is_correct, make_prompt, parse_prompt, score


def test_prompt_round_trip():
    assert make_prompt(3, 4) == "3+4="
    assert answer(3, 4) == "7"
    assert answer(9, 9) == "18"
    for a in range(10):
        for b in range(10):
            assert parse_prompt(make_prompt(a, b)) == (a, b)


def test_parse_chat_templated_prompt_uses_last_match():
    templated = "<|system|>Example: 1+1=2</s><|user|>3+4=</s><|assistant|>"
    assert parse_prompt(templated) == (3, 4)


@pytest.mark.parametrize("bad", ["", "3+", "3+4", "a+b="])
def test_parse_rejects_prompts_without_a_sum(bad):
    with pytest.raises(ValueError, match="d\\+d="):
        parse_prompt(bad)


@pytest.mark.parametrize("a,b", [(-1, 2), (10, 0), (1.0, 2)])
def test_make_prompt_rejects_non_digits(a, b):
    with pytest.raises(ValueError):
        make_prompt(a, b)


@pytest.mark.parametrize(
    "response,expected",
    [
        ("7", 1.0),
        (" 7\n", 1.0),  # surrounding whitespace is ignored
        ("8", 0.4),  # wrong number
        ("07", 0.4),  # a 1-2 digit number, not the answer's spelling
        ("12", 0.4),
        ("", 0.0),
        ("   ", 0.0),
        ("seven", 0.0),  # no digit at all
        ("hello world", 0.0),
        ("7a", 0.25),  # (0.15 + 0.05 + 0.1 * 1/2) * 1
        ("a7", 0.2),  # (0.15 + 0 + 0.1 * 1/2) * 1
        ("1234", 0.3),  # the largest partial credit
        ("12345678", 0.15),  # 0.3 * 4/8: long responses lose credit
    ],
)
def test_score_hand_picked(response, expected):
    assert score("3+4=", response) == pytest.approx(expected)


def test_score_on_chat_templated_prompt():
    prompt = "<|user|>9+9=</s><|assistant|>"
    assert score(prompt, "18") == 1.0
    assert score(prompt, "17") == 0.4
    assert is_correct(prompt, "18 ")
    assert not is_correct(prompt, "17")


def test_rungs_are_ordered_and_random_strings_score_low():
    """Non-numbers < wrong numbers (0.4) < the answer; random strings average ~0.06."""
    from rlhf.tiny import CHARACTERS

    rng = random.Random(0)
    scores = []
    for _ in range(3000):
        response = "".join(rng.choice(CHARACTERS) for _ in range(rng.randint(1, 12)))
        s = score("3+4=", response)
        stripped = response.strip()
        if stripped == "7":
            assert s == 1.0
        elif stripped.isdigit() and len(stripped) <= 2:
            assert s == arithmetic.WRONG_NUMBER_REWARD
        else:
            assert 0.0 <= s <= 0.3 + 1e-9
        if len(response) == 8:
            scores.append(s)
    mean = sum(scores) / len(scores)
    assert 0.03 < mean < 0.12, mean
