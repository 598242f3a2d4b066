"""Adapters of the preference and feedback formats: a raw row -> `PreferenceExample`s (or
`UnpairedExample`s), including pairs built from scored or ranked responses.

Each reads the fields of one published dataset shape (see the table in `rlhf.data.formats`).
"""

from __future__ import annotations

import re

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.examples import (
    Messages,
    PreferenceExample,
    ScoredExample,
    SFTExample,
    UnpairedExample,
    field,
    prompt_field,
    split_response,
    text,
    turns,
    user_prompt,
)


def scored_pairs(prompt: Messages, scored: list[tuple[str, float]], pairing: str) -> list[PreferenceExample]:
    """Preference pairs from responses with scores (higher is better), as ``data.pairing`` says.

    ``all``: every pair with different scores, K(K-1)/2 for K distinct scores (InstructGPT,
    Ouyang et al. 2022, trains its reward model on all of them); ``best_vs_rest``: the best
    against each lower-scored one; ``best_vs_worst``: the best against the worst. Equal scores
    make no pair.
    """
    ranked = sorted(scored, key=lambda rs: -rs[1])  # stable: equal scores keep file order
    if len(ranked) < 2 or ranked[0][1] == ranked[-1][1]:
        raise DataError(None, None, f"{len(ranked)} response(s) with {'equal scores' if len(ranked) > 1 else 'nothing to compare'}: "
                        "no preference pair")
    if pairing == "best_vs_worst":
        pairs = [(ranked[0], ranked[-1])]
    elif pairing == "best_vs_rest":
        pairs = [(ranked[0], other) for other in ranked[1:] if other[1] < ranked[0][1]]
    else:
        pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:] if b[1] < a[1]]
    return [PreferenceExample(prompt, chosen, rejected) for (chosen, _), (rejected, _) in pairs]


def _score(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(None, None, f"{what} must be a number, got {value!r}") from None


# ---- responses as strings ---------------------------------------------------------------------

def prompt_chosen_rejected(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    return [PreferenceExample(prompt_field(row), text(row, "chosen", "response"), text(row, "rejected", "response"))]


def stack_exchange(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    return [PreferenceExample(user_prompt(text(row, "question", "question")),
                              text(row, "response_j", "response"), text(row, "response_k", "response"))]


def orca_dpo_pairs(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    return [PreferenceExample(user_prompt(text(row, "question", "question"), row.get("system")),
                              text(row, "chosen", "response"), text(row, "rejected", "response"))]


# ---- responses as conversations ---------------------------------------------------------------

def _shared_prompt(chosen: Messages, rejected: Messages, what: str) -> Messages:
    if chosen != rejected:
        for i, (a, b) in enumerate(zip(chosen, rejected), start=1):
            if a != b:
                break
        else:
            i = min(len(chosen), len(rejected)) + 1
        raise DataError(None, None, f"chosen and rejected {what} do not share the same prompt turns "
                        f"(they differ at turn {i}: {len(chosen)} vs {len(rejected)} prompt turns)")
    return chosen


def chat_pairs(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    chosen_prompt, chosen = split_response(turns(field(row, "chosen"), "chosen"), "chosen")
    rejected_prompt, rejected = split_response(turns(field(row, "rejected"), "rejected"), "rejected")
    prompt = _shared_prompt(chosen_prompt, rejected_prompt, "conversations")
    if not prompt:
        if "prompt" not in row:
            raise DataError(None, None, "chosen and rejected hold only the response and there is no 'prompt' field")
        prompt = prompt_field(row)
    return [PreferenceExample(prompt, chosen, rejected)]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(row: dict, name: str) -> Messages:
    value = field(row, name)
    if not isinstance(value, str):
        raise DataError(None, None, f"field {name!r} must be a string, got {type(value).__name__}")
    parts = _HH_TURN.split("\n\n" + value.lstrip())
    if parts[0].strip() or len(parts) < 3:
        raise DataError(None, None, f"field {name!r} is not an HH transcript of '\\n\\nHuman: ...' and "
                        "'\\n\\nAssistant: ...' turns")
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def hh_rlhf(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    chosen_prompt, chosen = split_response(_hh_turns(row, "chosen"), "chosen")
    rejected_prompt, rejected = split_response(_hh_turns(row, "rejected"), "rejected")
    prompt = _shared_prompt(chosen_prompt, rejected_prompt, "transcripts")
    if not prompt:
        raise DataError(None, None, "HH transcript has no Human turn before the final Assistant response")
    return [PreferenceExample(prompt, chosen, rejected)]


# ---- scored and ranked responses --------------------------------------------------------------

_ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _ultrafeedback_score(completion: dict, attribute: str, i: int) -> float | None:
    if attribute in _ULTRAFEEDBACK_ASPECTS:
        rating = ((completion.get("annotations") or {}).get(attribute) or {}).get("Rating")
        return None if rating in (None, "N/A") else _score(rating, f"completions[{i}].annotations.{attribute}.Rating")
    return _score(completion.get(attribute), f"completions[{i}].{attribute}")


def ultrafeedback(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    """``instruction`` + ``completions`` scored by ``data.score_attribute`` (default ``overall_score``;
    also ``fine-grained_score`` or an annotation aspect, e.g. ``helpfulness``); unrated ones are left out."""
    attribute = cfg.score_attribute or "overall_score"
    completions = field(row, "completions")
    if not isinstance(completions, list):
        raise DataError(None, None, f"field 'completions' must be a list, got {type(completions).__name__}")
    scored = []
    for i, completion in enumerate(completions):
        if not isinstance(completion, dict) or not isinstance(completion.get("response"), str):
            raise DataError(None, None, f"completions[{i}] must be an object with a 'response' string")
        score = _ultrafeedback_score(completion, attribute, i)
        if score is not None and completion["response"].strip():
            scored.append((completion["response"], score))
    return scored_pairs(user_prompt(text(row, "instruction", "prompt")), scored, cfg.pairing)


HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def helpsteer_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    return [SFTExample(prompt_field(row), text(row, "response", "response"))]


def _helpsteer_attribute(cfg: DataConfig) -> str:
    attribute = cfg.score_attribute or "helpfulness"
    if attribute not in HELPSTEER_ATTRIBUTES:
        raise DataError(None, None, f"data.score_attribute {attribute!r} is not a HelpSteer attribute ({', '.join(HELPSTEER_ATTRIBUTES)})")
    return attribute


def helpsteer_pairs(rows: list[dict], cfg: DataConfig) -> list[PreferenceExample]:
    """Consecutive rows with the same ``prompt`` (HelpSteer's layout), paired by ``data.score_attribute``
    (default ``helpfulness``)."""
    attribute = _helpsteer_attribute(cfg)
    scored = [(text(row, "response", "response"), _score(field(row, attribute), attribute)) for row in rows]
    return scored_pairs(prompt_field(rows[0]), scored, cfg.pairing)


def helpsteer_scored(row: dict, cfg: DataConfig) -> list[ScoredExample]:
    """One row as a regression target: the response scored by ``data.score_attribute`` (default ``helpfulness``)."""
    attribute = _helpsteer_attribute(cfg)
    return [ScoredExample(prompt_field(row), text(row, "response", "response"), _score(field(row, attribute), attribute))]


def ranked(row: dict, cfg: DataConfig) -> list[PreferenceExample]:
    """``prompt`` + ``responses``: strings with a parallel ``ranks`` (1 = best) or ``scores`` list,
    or objects ``{"text", "rank"}`` / ``{"text", "score"}``."""
    responses = field(row, "responses")
    if not isinstance(responses, list):
        raise DataError(None, None, f"field 'responses' must be a list, got {type(responses).__name__}")
    if all(isinstance(r, dict) for r in responses):
        texts = [r.get("text") for r in responses]
        key = "rank" if all("rank" in r for r in responses) else "score"
        values = [r.get(key) for r in responses]
    else:
        key = "rank" if "ranks" in row else "score"
        texts, values = responses, field(row, key + "s")
        if not isinstance(values, list) or len(values) != len(texts):
            raise DataError(None, None, f"field '{key}s' must be a list as long as 'responses' ({len(texts)})")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(None, None, "every response must be a non-empty string")
    sign = -1.0 if key == "rank" else 1.0  # rank 1 is the best
    scored = [(t, sign * _score(v, key)) for t, v in zip(texts, values)]
    return scored_pairs(prompt_field(row), scored, cfg.pairing)


# ---- unpaired feedback (KTO) ------------------------------------------------------------------

def unpaired(row: dict, cfg: DataConfig) -> list[UnpairedExample]:
    """``prompt``, ``completion`` (a string, or TRL's ``[{"role": "assistant", ...}]``), ``label`` (bool)."""
    label = field(row, "label")
    if not isinstance(label, bool):
        raise DataError(None, None, f"field 'label' must be true or false, got {label!r}")
    completion = field(row, "completion")
    if isinstance(completion, list):
        completion = split_response(turns(completion, "completion"), "completion")[1]
    else:
        completion = text(row, "completion", "response")
    return [UnpairedExample(prompt_field(row), completion, label)]
