"""One row per format, shaped exactly as the published dataset (field names and nesting as
published), through detection, the adapters and `python -m rlhf.run CONFIG --dry-run`."""

import json

import pytest
import yaml

from rlhf.config import CHAT_TEMPLATE_NAMES, DataConfig, RLHFConfig
from rlhf.data.datasets import load_preference_dataset, load_sft_dataset, load_unpaired_dataset
from rlhf.data.errors import DataError
from rlhf.data.examples import PreferenceExample, SFTExample, UnpairedExample
from rlhf.data.formats import FORMATS, detect_format, examples, formats_for
from rlhf.data.templates import CHAT_TEMPLATES


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


Q = [user("What is 3+4?")]

# format -> (kind, published row, the examples it must make)
PUBLISHED = {
    "openorca": ("SFT", {  # Open-Orca/OpenOrca
        "id": "niv.242684", "system_prompt": "You are an AI assistant.", "question": "What is 3+4?", "response": "7",
    }, [SFTExample([system("You are an AI assistant."), user("What is 3+4?")], "7")]),
    "alpaca": ("SFT", {  # tatsu-lab/alpaca
        "instruction": "Add the numbers.", "input": "3 and 4", "output": "7",
        "text": "Below is an instruction that describes a task...",
    }, [SFTExample([user("Add the numbers.\n\n3 and 4")], "7")]),
    "sharegpt": ("SFT", {  # ShareGPT / OpenHermes / SlimOrca
        "id": "QWJhYvA_0", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is 3+4?"}, {"from": "gpt", "value": "7"},
            {"from": "human", "value": "Thanks"}],
    }, [SFTExample([system("Be brief."), user("What is 3+4?")], "7")]),
    "messages": ("SFT", {  # HuggingFaceH4/no_robots
        "prompt": "What is 3+4?", "prompt_id": "a6b1d3f0", "category": "Open QA",
        "messages": [{"content": "What is 3+4?", "role": "user"}, {"content": "7", "role": "assistant"}],
    }, [SFTExample(Q, "7")]),
    "oasst_tree": ("SFT", {  # OpenAssistant/oasst1 2023-04-12_oasst_ready.trees.jsonl
        "message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": {
            "message_id": "m1", "parent_id": None, "text": "What is 3+4?", "role": "prompter", "lang": "en", "replies": [
                {"message_id": "m2", "text": "8", "role": "assistant", "rank": 1, "replies": []},
                {"message_id": "m3", "text": "7", "role": "assistant", "rank": 0, "replies": [
                    {"message_id": "m4", "text": "And 2+2?", "role": "prompter", "replies": [
                        {"message_id": "m5", "text": "4", "role": "assistant", "rank": None, "replies": []}]},
                    {"message_id": "m6", "text": "Why?", "role": "prompter", "replies": [
                        {"message_id": "m7", "text": "Counting.", "role": "assistant", "rank": 0, "replies": []}]},
                    {"message_id": "m8", "text": "Thanks", "role": "prompter", "replies": []}]}]},
    }, [SFTExample(Q + [assistant("7"), user("And 2+2?")], "4"), SFTExample(Q + [assistant("7"), user("Why?")], "Counting.")]),
    "orca_dpo_pairs": ("preference", {  # Intel/orca_dpo_pairs
        "system": "", "question": "What is 3+4?", "chosen": "7", "rejected": "8",
    }, [PreferenceExample(Q, "7", "8")]),
    "chat_pairs": ("preference", {  # HuggingFaceH4/ultrafeedback_binarized
        "prompt": "What is 3+4?", "prompt_id": "c0ffee", "score_chosen": 9.0, "score_rejected": 4.0,
        "chosen": [user("What is 3+4?"), assistant("7")], "rejected": [user("What is 3+4?"), assistant("8")],
        "messages": [user("What is 3+4?"), assistant("7")],
    }, [PreferenceExample(Q, "7", "8")]),
    "hh_rlhf": ("preference", {  # Anthropic/hh-rlhf
        "chosen": "\n\nHuman: What is 3+4?\n\nAssistant: 7", "rejected": "\n\nHuman: What is 3+4?\n\nAssistant: 8",
    }, [PreferenceExample(Q, "7", "8")]),
    "stack_exchange": ("preference", {  # lvwerra/stack-exchange-paired
        "qid": 1, "question": "What is 3+4?", "date": "2008/07/31", "metadata": ["https://x"], "response_j": "7", "response_k": "8",
    }, [PreferenceExample(Q, "7", "8")]),
    "ultrafeedback": ("preference", {  # openbmb/UltraFeedback (raw)
        "source": "evol_instruct", "instruction": "What is 3+4?", "models": ["a", "b", "c"],
        "correct_answers": ["None"], "incorrect_answers": ["None"], "completions": [
            {"model": "a", "principle": "helpfulness", "custom_system_prompt": "", "response": "8", "critique": "wrong",
             "overall_score": 3.0, "fine-grained_score": 2.0,
             "annotations": {"helpfulness": {"Rating": "2", "Rationale": "", "Type": ["1"]}, "honesty": {"Rating": "N/A"}}},
            {"model": "b", "principle": "helpfulness", "custom_system_prompt": "", "response": "7", "critique": "right",
             "overall_score": 9.0, "fine-grained_score": 4.75,
             "annotations": {"helpfulness": {"Rating": "5", "Rationale": "", "Type": ["1"]}, "honesty": {"Rating": "5"}}},
            {"model": "c", "principle": "helpfulness", "custom_system_prompt": "", "response": "seven", "critique": "ok",
             "overall_score": 6.5, "fine-grained_score": 4.0,
             "annotations": {"helpfulness": {"Rating": "4", "Rationale": "", "Type": ["1"]}, "honesty": {"Rating": "4"}}}],
    }, [PreferenceExample(Q, "7", "seven"), PreferenceExample(Q, "7", "8"), PreferenceExample(Q, "seven", "8")]),
    "ranked": ("preference", {  # InstructGPT-style ranked completions
        "prompt": "What is 3+4?", "responses": ["seven", "7", "8"], "ranks": [2, 1, 3],
    }, [PreferenceExample(Q, "7", "seven"), PreferenceExample(Q, "7", "8"), PreferenceExample(Q, "seven", "8")]),
    "unpaired": ("unpaired", {  # TRL unpaired preference (KTO)
        "prompt": "What is 3+4?", "completion": "8", "label": False,
    }, [UnpairedExample(Q, "8", False)]),
    "prompt_completion": ("SFT", {  # TRL's standard prompt-completion type
        "prompt": "What is 3+4?", "completion": "7",
    }, [SFTExample(Q, "7")]),
    "prompt_chosen_rejected": ("preference", {  # TRL's standard preference type (explicit prompt)
        "prompt": "What is 3+4?", "chosen": "7", "rejected": "8",
    }, [PreferenceExample(Q, "7", "8")]),
}
HELPSTEER_ROWS = [  # nvidia/HelpSteer2: the responses to one prompt are consecutive rows
    {"prompt": "What is 3+4?", "response": "8", "helpfulness": 1, "correctness": 0, "coherence": 4, "complexity": 0, "verbosity": 0},
    {"prompt": "What is 3+4?", "response": "7", "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 0, "verbosity": 0},
]


@pytest.mark.parametrize("fmt", list(PUBLISHED))
def test_published_rows_are_detected_and_read(fmt):
    kind, row, expected = PUBLISHED[fmt]
    assert detect_format(row, kind) == fmt
    assert examples(row, fmt, kind, DataConfig()) == expected


def test_every_format_has_a_published_row_and_a_config_name():
    assert set(PUBLISHED) | {"helpsteer", "prompt"} == set(FORMATS)
    assert set(RLHFConfig.model_fields["data"].annotation.model_fields["format"].annotation.__args__) == {"auto", *FORMATS}
    assert set(CHAT_TEMPLATE_NAMES) == {"tokenizer", *CHAT_TEMPLATES}


def test_helpsteer_rows_are_sft_examples_and_pairs_by_attribute(tmp_path, tiny_tokenizer):
    assert detect_format(HELPSTEER_ROWS[0], "SFT") == "helpsteer"
    assert examples(HELPSTEER_ROWS[0], "helpsteer", "SFT", DataConfig()) == [SFTExample(Q, "8")]
    assert examples(HELPSTEER_ROWS, "helpsteer", "preference", DataConfig()) == [PreferenceExample(Q, "7", "8")]
    with pytest.raises(DataError, match="2 response"):  # equal coherence: no pair
        examples(HELPSTEER_ROWS, "helpsteer", "preference", DataConfig(score_attribute="coherence"))
    other = {**HELPSTEER_ROWS[0], "prompt": "What is 1+1?", "response": "2"}
    path = write_jsonl(tmp_path / "helpsteer.jsonl", HELPSTEER_ROWS + [other, {**other, "response": "3", "helpfulness": 0}])
    pairs = load_preference_dataset(path, tiny_tokenizer, DataConfig())
    assert (pairs.format, pairs.rows_read, len(pairs)) == ("helpsteer", 4, 2)


def test_ultrafeedback_score_attribute_and_pairing():
    _, row, _ = PUBLISHED["ultrafeedback"]
    best_vs_worst = examples(row, "ultrafeedback", "preference", DataConfig(pairing="best_vs_worst"))
    assert best_vs_worst == [PreferenceExample(Q, "7", "8")]
    best_vs_rest = examples(row, "ultrafeedback", "preference", DataConfig(pairing="best_vs_rest", score_attribute="helpfulness"))
    assert best_vs_rest == [PreferenceExample(Q, "7", "seven"), PreferenceExample(Q, "7", "8")]
    # honesty: "N/A" leaves the first completion out
    assert examples(row, "ultrafeedback", "preference", DataConfig(score_attribute="honesty")) == [PreferenceExample(Q, "7", "seven")]


def test_ranked_responses_as_objects_with_scores_make_all_pairs():
    row = {"prompt": "What is 3+4?", "responses": [{"text": t, "score": s} for t, s in (("a", 1), ("b", 4), ("c", 2), ("d", 3))]}
    pairs = examples(row, "ranked", "preference", DataConfig())
    assert len(pairs) == 4 * 3 // 2
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "d"), ("b", "c"), ("b", "a"), ("d", "c"), ("d", "a"), ("c", "a")]


def test_pairs_split_into_unpaired_examples():
    _, row, _ = PUBLISHED["orca_dpo_pairs"]
    assert examples(row, "orca_dpo_pairs", "unpaired", DataConfig()) == [UnpairedExample(Q, "7", True), UnpairedExample(Q, "8", False)]


def test_helpsteer_pairs_split_into_unpaired_examples(tmp_path, tiny_tokenizer):
    data = load_unpaired_dataset(write_jsonl(tmp_path / "h.jsonl", HELPSTEER_ROWS), tiny_tokenizer, DataConfig())
    assert [(tiny_tokenizer.decode(e.response_ids), e.desirable) for e in data] == [("7</s>", True), ("8</s>", False)]


def test_columns_map_our_names_to_the_files():
    row = {"q": "What is 3+4?", "a": "7"}
    cfg = DataConfig(columns={"prompt": "q", "completion": "a"})
    from rlhf.data.formats import map_columns

    mapped = map_columns(row, cfg.columns)
    assert detect_format(mapped, "SFT") == "prompt_completion"
    assert examples(mapped, "prompt_completion", "SFT", cfg) == [SFTExample(Q, "7")]
    with pytest.raises(DataError, match=r"data.columns maps 'prompt' to the column 'q', which this row lacks \(keys: a\)"):
        map_columns({"a": "7"}, cfg.columns)


def test_failed_and_ambiguous_detection_say_how_to_fix_it():
    with pytest.raises(DataError) as info:
        detect_format({"query": "What is 3+4?", "answer": "7"}, "SFT")
    message = str(info.value)
    assert "the row has keys [answer, query]" in message
    assert "openorca (system_prompt, question, response)" in message and "sharegpt (conversations)" in message
    assert "data.format" in message and "data.columns='{prompt: question, completion: answer}'" in message
    with pytest.raises(DataError, match="ambiguous data format: the row matches messages and sharegpt"):
        detect_format({"messages": [], "conversations": []}, "SFT")


def test_unpaired_rows_are_not_sft_data():
    with pytest.raises(DataError, match="it looks like format 'unpaired', which cannot make SFT examples"):
        detect_format(PUBLISHED["unpaired"][1], "SFT")


def test_formats_for_each_kind():
    assert "prompt" not in formats_for("SFT") and "helpsteer" in formats_for("SFT")
    assert set(formats_for("unpaired")) == {name for name, f in FORMATS.items() if f.preference or f.unpaired}
    assert set(formats_for("prompt")) == set(FORMATS)


# ---- through loading and --dry-run ------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALGORITHM = {"SFT": "sft", "preference": "dpo"}


def dry_run(tmp_path, tiny_assets, capsys, data: dict, algorithm: str, options: dict | None = None):
    """``--dry-run`` of ``algorithm`` (``options``: more of its algorithm section) on ``data``: (exit code, stdout, stderr)."""
    from rlhf.run import main

    config = {"model": {"policy": tiny_assets["policy"], "dtype": "float32"}, "algorithm": {"name": algorithm, **(options or {})},
              "data": {"max_prompt_len": 64, "max_response_len": 16, **data}, "resources": {"device": "cpu"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main([str(path), "--dry-run"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("fmt", [f for f in PUBLISHED if PUBLISHED[f][0] in ALGORITHM])
def test_dry_run_reads_each_published_format(fmt, tmp_path, tiny_assets, capsys):
    kind, row, expected = PUBLISHED[fmt]
    train = write_jsonl(tmp_path / "train.jsonl", [row, row])
    code, out, err = dry_run(tmp_path, tiny_assets, capsys, {"train": str(train)}, ALGORITHM[kind])
    assert code == 0, err
    assert f"format: {fmt} (detected)" in out
    assert f"rows: 2 read, 0 skipped; {2 * len(expected)} examples" in out
    assert "⟦" in out and "dry run OK" in out


def test_dry_run_reports_lengths_truncation_skips_and_the_rendered_example(tmp_path, tiny_assets, capsys):
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": ""},
            {"prompt": "3+3=", "completion": "6" * 20}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    data = {"train": str(train), "on_error": "skip", "truncation": "right", "system_prompt": "Add."}
    code, out, err = dry_run(tmp_path, tiny_assets, capsys, data, "sft")
    assert code == 0, err
    assert "rows: 3 read, 1 skipped; 2 examples" in out
    assert "skipped row 2: empty response in 'completion'" in out
    # <|system|>Add.</s><|user|>1+1=</s><|assistant|>: 13 tokens; the responses: 2 and 21 tokens
    assert "prompt tokens: p50 13, p90 13, p99 13, max 13; none over the limit 64" in out
    assert "response tokens: p50 2, p90 21, p99 21, max 21; 1 over the limit 16: truncated (data.truncation=right)" in out
    assert "response: <|system|>Add.</s><|user|>1+1=</s><|assistant|>⟦2</s>⟧" in out


def test_dry_run_exits_2_on_bad_data(tmp_path, tiny_assets, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"system": "", "question": "What is 3+4?"}])
    code, out, err = dry_run(tmp_path, tiny_assets, capsys, {"train": str(train)}, "dpo")
    assert code == 2
    assert f"data error: {train}: row 1: cannot detect the preference data format" in err and "data.columns" in err


def test_unpaired_rows_load(tmp_path, tiny_tokenizer):
    _, row, _ = PUBLISHED["unpaired"]
    data = load_unpaired_dataset(write_jsonl(tmp_path / "kto.jsonl", [row, {**row, "completion": "7", "label": True}]),
                                 tiny_tokenizer, DataConfig())
    assert [e.desirable for e in data] == [False, True]
    assert tiny_tokenizer.decode(data[1].response_ids) == "7</s>"


def test_system_prompt_is_prepended_only_when_there_is_none(tmp_path, tiny_tokenizer):
    rows = [{"messages": [user("1+1="), assistant("2")]}, {"messages": [system("Sum."), user("1+1="), assistant("2")]}]
    data = load_sft_dataset(write_jsonl(tmp_path / "m.jsonl", rows), tiny_tokenizer, DataConfig(system_prompt="Add."))
    assert [tiny_tokenizer.decode(e.prompt_ids) for e in data] == [
        "<|system|>Add.</s><|user|>1+1=</s><|assistant|>", "<|system|>Sum.</s><|user|>1+1=</s><|assistant|>"]


@pytest.mark.parametrize("algorithm, n_examples", [("sft", 2), ("dpo", 1)])
def test_dry_run_reads_helpsteer_as_sft_rows_or_pairs(algorithm, n_examples, tmp_path, tiny_assets, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", HELPSTEER_ROWS)
    code, out, err = dry_run(tmp_path, tiny_assets, capsys, {"train": str(train)}, algorithm)
    assert code == 0, err
    assert f"format: helpsteer (detected)\n  rows: 2 read, 0 skipped; {n_examples} examples" in out


def test_dry_run_of_a_base_model_without_a_template_names_data_chat_template(tmp_path, tiny_assets, capsys):
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["policy"])
    tokenizer.chat_template = None
    tokenizer.save_pretrained(str(base))
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1+1=", "completion": "2"}])
    config = {"model": {"policy": str(base)}, "algorithm": {"name": "sft"}, "data": {"train": str(train)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    from rlhf.run import main

    assert main([str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    assert f"data error: {train}: the tokenizer has no chat template; set data.chat_template" in capsys.readouterr().err
    assert main([str(tmp_path / "c.yaml"), "--dry-run", "data.chat_template=chatml"]) == 0
    out = capsys.readouterr().out  # (the char tokenizer has no '|': <unk>)
    assert "<<unk>im_start<unk>>assistant\n    ⟦2" in out and "chat template 'chatml'" in out
