"""The data formats: one registry entry per published dataset shape, detected from a row's keys.

``data.format: auto`` (the default) detects the format from the keys of the first usable row
(after ``data.columns`` renamed the file's columns to ours) and then requires it of every row;
``data.format: NAME`` skips detection. The kinds: *prompt* (PPO and the other online
algorithms; every format gives prompts), *SFT*, *preference* (DPO, reward models), *unpaired*
(KTO; a preference pair also splits into one desirable and one undesirable example) and *scored*
(one response with a score: the target of ``algorithm.rm.objective: regression``).

=======================  ============================================  ==========  ==========================================
format                   keys of a row (``?`` optional)                kinds       published datasets of this shape
=======================  ============================================  ==========  ==========================================
prompt                   ``prompt``: str or turns                      prompt      any prompt list
messages                 ``messages``: ``[{role, content}]`` (extra    SFT         HuggingFaceH4/no_robots, ultrachat_200k,
                         keys in rows and turns are ignored)                       OpenAI-style chat files
prompt_completion        ``prompt``, ``completion``                    SFT         TRL prompt-completion files
openorca                 ``system_prompt``, ``question``, ``response`` SFT         Open-Orca/OpenOrca, SlimOrca-style
alpaca                   ``instruction``, ``input?``, ``output``       SFT         tatsu-lab/alpaca, cognitivecomputations/dolphin
sharegpt                 ``conversations``: ``[{from, value}]``,       SFT         ShareGPT dumps, OpenHermes, SlimOrca
                         ``from`` in system/human/gpt
oasst_tree               ``message_tree_id``, ``prompt``: a message    SFT         OpenAssistant oasst1/oasst2 ``*.trees.jsonl``
                         tree (``role``, ``text``, ``rank``,
                         ``replies``); one example per leaf path,
                         best-ranked answer at every branch
prompt_chosen_rejected   ``prompt``, ``chosen``, ``rejected``: str     preference  TRL preference files
chat_pairs               ``chosen``, ``rejected``: turns sharing the   preference  HuggingFaceH4/ultrafeedback_binarized
                         prompt turns (``prompt?``)
hh_rlhf                  ``chosen``, ``rejected``: ``\\n\\nHuman:``     preference  Anthropic/hh-rlhf
                         / ``\\n\\nAssistant:`` transcripts
stack_exchange           ``question``, ``response_j``, ``response_k``  preference  lvwerra/stack-exchange-paired
orca_dpo_pairs           ``system``, ``question``, ``chosen``,         preference  Intel/orca_dpo_pairs
                         ``rejected``
ultrafeedback            ``instruction``, ``completions``: ``[{        preference  openbmb/UltraFeedback (raw)
                         response, overall_score, fine-grained_score,
                         annotations}]``
helpsteer                ``prompt``, ``response``, ``helpfulness``,    SFT         nvidia/HelpSteer, nvidia/HelpSteer2
                         correctness, coherence, complexity, verbosity preference
                                                                       scored
ranked                   ``prompt``, ``responses`` (+ ``ranks`` or     preference  InstructGPT-style ranked completions
                         ``scores``, or ``[{text, rank|score}]``)
unpaired                 ``prompt``, ``completion``, ``label``: bool   unpaired    TRL unpaired preference (KTO) files
=======================  ============================================  ==========  ==========================================

Pairs from scored responses (ultrafeedback, helpsteer, ranked) follow ``data.pairing``
(`preference_formats.scored_pairs`: ``all`` K(K-1)/2 pairs, ``best_vs_rest``, ``best_vs_worst``)
and rank by ``data.score_attribute``; HelpSteer pairs the consecutive rows of one prompt. As
scored examples a HelpSteer row's target is its ``data.score_attribute`` (default helpfulness).

Detection: the formats whose keys the row has (and whose value shapes it matches: ``chosen``
as turns or text, a ``prompt`` tree) and which can make the wanted kind are candidates, except
one whose keys are a subset of a matching format's that cannot (an unpaired row is not SFT
data); the one with the most keys wins (``prompt`` only when nothing else matches). No candidate, or two with
as many keys, is a `DataError` that lists the keys seen, the known formats and how to set
``data.format`` and ``data.columns``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rlhf.config import DataConfig
from rlhf.data import chat_formats as chat
from rlhf.data import preference_formats as pref
from rlhf.data.errors import DataError
from rlhf.data.examples import Messages, PromptExample, UnpairedExample, plain_prompt

KINDS = ("prompt", "SFT", "preference", "unpaired", "scored")


@dataclass(frozen=True)
class Format:
    """One dataset shape: the keys that identify it and its adapters, one per kind it can make."""

    name: str
    keys: tuple[str, ...]
    shape: Callable[[dict], bool] = lambda row: True  # value checks beyond the keys
    prompt: Callable[[dict], Messages] | None = None  # default: the first example's prompt
    sft: Callable | None = None
    preference: Callable | None = None
    unpaired: Callable | None = None
    scored: Callable | None = None
    group_by: str | None = None  # preference pairs come from consecutive rows sharing this field
    fallback: bool = False  # a candidate only when no other format matches

    def supports(self, kind: str) -> bool:
        if kind == "prompt":
            return True
        if kind == "unpaired":
            return self.unpaired is not None or self.preference is not None
        return getattr(self, kind.lower()) is not None

    def grouped_by(self, kind: str) -> str | None:
        """The field whose consecutive equal values make one unit of rows for ``kind`` examples: the pairs of
        a grouped format, and the unpaired examples split from them, come from several rows."""
        from_pairs = kind == "preference" or (kind == "unpaired" and self.unpaired is None)
        return self.group_by if from_pairs else None


def _is(key: str, kind: type) -> Callable[[dict], bool]:
    return lambda row: isinstance(row.get(key), kind)


_FORMATS = [
    Format("prompt", ("prompt",), prompt=chat.prompt_prompt, fallback=True),
    Format("messages", ("messages",), _is("messages", list), chat.messages_prompt, sft=chat.messages_sft),
    Format("prompt_completion", ("prompt", "completion"), sft=chat.prompt_completion_sft),
    Format("openorca", ("system_prompt", "question", "response"), sft=chat.openorca_sft),
    Format("alpaca", ("instruction", "output"), prompt=chat.alpaca_prompt, sft=chat.alpaca_sft),
    Format("sharegpt", ("conversations",), _is("conversations", list), chat.sharegpt_prompt, sft=chat.sharegpt_sft),
    Format("oasst_tree", ("message_tree_id", "prompt"), _is("prompt", dict), chat.oasst_prompt, sft=chat.oasst_sft),
    Format("prompt_chosen_rejected", ("prompt", "chosen", "rejected"), _is("chosen", str), preference=pref.prompt_chosen_rejected),
    Format("chat_pairs", ("chosen", "rejected"), _is("chosen", list), preference=pref.chat_pairs),
    Format("hh_rlhf", ("chosen", "rejected"), _is("chosen", str), preference=pref.hh_rlhf),
    Format("stack_exchange", ("question", "response_j", "response_k"), preference=pref.stack_exchange),
    Format("orca_dpo_pairs", ("system", "question", "chosen", "rejected"), preference=pref.orca_dpo_pairs),
    Format("ultrafeedback", ("instruction", "completions"), _is("completions", list), preference=pref.ultrafeedback),
    Format("helpsteer", ("prompt", "response", "helpfulness"), sft=pref.helpsteer_sft, preference=pref.helpsteer_pairs,
           scored=pref.helpsteer_scored, group_by="prompt"),
    Format("ranked", ("prompt", "responses"), lambda row: isinstance(row.get("responses"), list)
           and ("ranks" in row or "scores" in row or all(isinstance(r, dict) for r in row["responses"])),
           preference=pref.ranked),
    Format("unpaired", ("prompt", "completion", "label"), unpaired=pref.unpaired),
]
FORMATS: dict[str, Format] = {f.name: f for f in _FORMATS}
# Row fields that `data.columns` may map a file's column to: every format's keys and the optional
# top-level fields some adapters read besides them.
FIELD_NAMES = frozenset(key for f in _FORMATS for key in f.keys) | {"input", "system", "ranks", "scores"}


def formats_for(kind: str) -> tuple[str, ...]:
    """Names of the formats that can make ``kind`` examples."""
    return tuple(name for name, f in FORMATS.items() if f.supports(kind))


def map_columns(row: dict, columns: dict[str, str]) -> dict:
    """``row`` with ``data.columns`` applied: our field name -> the file's column name."""
    if not columns:
        return row
    mapped = dict(row)
    for ours, theirs in columns.items():
        if theirs not in row:
            raise DataError(None, None, f"data.columns maps {ours!r} to the column {theirs!r}, which this row lacks "
                            f"(keys: {', '.join(sorted(row)) or 'none'})")
        mapped[ours] = row[theirs]
    return mapped


def _help(row: dict, kind: str) -> str:
    known = "; ".join(f"{name} ({', '.join(FORMATS[name].keys)})" for name in formats_for(kind))
    return (f"the row has keys [{', '.join(sorted(row))}]; {kind} formats (keys): {known}. Set data.format to one "
            "of them, and data.columns to map its field names to this file's columns, e.g. "
            "data.columns='{prompt: question, completion: answer}'")


def detect_format(row: dict, kind: str = "prompt") -> str:
    """The format of ``row`` (columns already mapped) that can make ``kind`` examples (see the module doc)."""
    matching = [f for f in _FORMATS if set(f.keys) <= set(row) and f.shape(row)]
    # A row of a more specific format (unpaired: prompt, completion, label) is not read as one whose
    # keys are a subset of its own (prompt_completion): SFT would train on undesirable completions.
    wider = [f for f in matching if not f.supports(kind)]
    candidates = [f for f in matching if f.supports(kind) and not any(set(f.keys) < set(w.keys) for w in wider)]
    if not candidates:
        closest = max(matching, key=lambda f: len(f.keys), default=None)
        seen = f" (it looks like format {closest.name!r}, which cannot make {kind} examples)" if closest else ""
        raise DataError(None, None, f"cannot detect the {kind} data format{seen}: {_help(row, kind)}")
    preferred = [f for f in candidates if not f.fallback] or candidates
    most = max(len(f.keys) for f in preferred)
    best = [f for f in preferred if len(f.keys) == most]
    if len(best) > 1:
        raise DataError(None, None, f"ambiguous data format: the row matches {' and '.join(f.name for f in best)}; "
                        f"{_help(row, kind)}")
    return best[0].name


def check_format(name: str, kind: str) -> Format:
    """The registry entry ``name``; DataError when it cannot make ``kind`` examples."""
    if name not in FORMATS or not FORMATS[name].supports(kind):
        raise DataError(None, None, f"format {name!r} cannot be used for {kind} data; use one of {', '.join(formats_for(kind))}")
    return FORMATS[name]


def examples(row: dict, name: str, kind: str, cfg: DataConfig) -> list:
    """The ``kind`` examples of one row of format ``name``.

    With a grouped format (`Format.grouped_by`) ``row`` is the group's rows (a list).
    """
    fmt = check_format(name, kind)
    if kind == "prompt":
        prompt = fmt.prompt(row) if fmt.prompt else _first_example(fmt, row, cfg).prompt_messages
        return [PromptExample(prompt, plain_prompt(prompt))]
    if kind == "unpaired" and fmt.unpaired is None:  # a pair is one desirable and one undesirable example
        return [UnpairedExample(p.prompt_messages, completion, label) for p in fmt.preference(row, cfg)
                for completion, label in ((p.chosen, True), (p.rejected, False))]
    return getattr(fmt, kind.lower())(row, cfg)


def _first_example(fmt: Format, row: dict, cfg: DataConfig):
    for kind in ("sft", "preference", "unpaired", "scored"):
        adapter = getattr(fmt, kind)
        if adapter is not None and not (kind == "preference" and fmt.group_by):
            return adapter(row, cfg)[0]
    raise DataError(None, None, f"format {fmt.name!r} has no prompt")

