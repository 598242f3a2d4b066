"""Dataset loaders: the tiny data files, on_error raise/skip, max_samples and located error messages."""

import json
import logging

import pytest

from rlhf.config import DataConfig
from rlhf.data.datasets import load_preference_dataset, load_prompt_dataset, load_sft_dataset
from rlhf.data.errors import DataError

EOS, USER, ASSISTANT = 2, 5, 6


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_tiny_prompt_files(tiny_assets, tiny_tokenizer):
    for name, fmt in (("prompts_train", "prompt"), ("prompts_train_messages", "messages")):
        ds = load_prompt_dataset(tiny_assets[name], tiny_tokenizer, DataConfig())
        assert (len(ds), ds.format, ds.skipped, ds.rows_read, ds.source) == (80, fmt, 0, 80, tiny_assets[name])
        first = ds[0]
        assert first.prompt_ids[0] == USER and first.prompt_ids[-2:] == [EOS, ASSISTANT]
        assert tiny_tokenizer.decode(first.prompt_ids) == f"<|user|>{first.raw_prompt}</s><|assistant|>"
    # Both files hold the same prompts, so they tokenize the same.
    a = load_prompt_dataset(tiny_assets["prompts_train"], tiny_tokenizer, DataConfig())
    b = load_prompt_dataset(tiny_assets["prompts_train_messages"], tiny_tokenizer, DataConfig())
    assert list(a) == list(b)


def test_tiny_sft_and_preference_files(tiny_assets, tiny_tokenizer):
    sft = load_sft_dataset(tiny_assets["sft_train"], tiny_tokenizer, DataConfig())
    assert (len(sft), sft.format) == (80, "prompt_completion")
    assert all(e.response_ids[-1] == EOS for e in sft)
    pref = load_preference_dataset(tiny_assets["pref_train"], tiny_tokenizer, DataConfig())
    assert (len(pref), pref.format) == (320, "prompt_chosen_rejected")
    assert all(e.chosen_ids[-1] == EOS and e.rejected_ids[-1] == EOS for e in pref)
    # Preference rows work as PPO prompts too.
    assert len(load_prompt_dataset(tiny_assets["pref_train"], tiny_tokenizer, DataConfig())) == 320


def test_every_preference_format_loads(tmp_path, tiny_tokenizer):
    rows = {
        "chat_pairs": {"chosen": [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": "7"}],
                       "rejected": [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": "8"}]},
        "hh_rlhf": {"chosen": "\n\nHuman: 3+4=\n\nAssistant: 7", "rejected": "\n\nHuman: 3+4=\n\nAssistant: 8"},
        "stack_exchange": {"question": "3+4=", "response_j": "7", "response_k": "8"},
        "prompt_chosen_rejected": {"prompt": "3+4=", "chosen": "7", "rejected": "8"},
    }
    results = set()
    for fmt, row in rows.items():
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", [row])
        for cfg_format in ("auto", fmt):
            ds = load_preference_dataset(path, tiny_tokenizer, DataConfig(format=cfg_format))
            assert ds.format == fmt
            results.add((tuple(ds[0].chosen_input_ids), tuple(ds[0].rejected_input_ids)))
    assert len(results) == 1  # the same pair, whatever the format


def test_max_samples(tiny_assets, tiny_tokenizer):
    ds = load_sft_dataset(tiny_assets["sft_train"], tiny_tokenizer, DataConfig(max_samples=5))
    assert (len(ds), ds.rows_read) == (5, 5)


def test_max_samples_counts_kept_examples(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1="}, {"prompt": ""}, {"prompt": "2+2="}, {"prompt": "3+3="}])
    ds = load_prompt_dataset(path, tiny_tokenizer, DataConfig(max_samples=2, on_error="skip"))
    assert [e.raw_prompt for e in ds] == ["1+1=", "2+2="]
    assert (ds.rows_read, ds.skipped) == (3, 1)


GOOD_SFT = {"prompt": "3+4=", "completion": "7"}
BAD_SFT_ROWS = [
    # (bad row, reason)
    ({"prompt": "3+4="}, "missing field 'completion'"),
    ({"prompt": "3+4=", "completion": 7}, "field 'completion' must be a string, got int"),
    ({"prompt": "3+4=", "completion": ""}, "empty response in 'completion'"),
    ({"prompt": "3+4=" * 100, "completion": "7"}, "prompt has 403 tokens, limit 256"),
    ('{"prompt": "3+4=", "completion": }', "invalid JSON"),
]


@pytest.mark.parametrize("bad, reason", BAD_SFT_ROWS, ids=[r for _, r in BAD_SFT_ROWS])
def test_bad_row_raises_with_file_row_and_reason(tmp_path, tiny_tokenizer, bad, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT, bad, GOOD_SFT])
    with pytest.raises(DataError) as info:
        load_sft_dataset(path, tiny_tokenizer, DataConfig())
    assert str(info.value).startswith(f"{path}: row 3: ")
    assert reason in str(info.value)
    assert (info.value.source, info.value.row) == (path, 3)


@pytest.mark.parametrize("bad, reason", BAD_SFT_ROWS, ids=[r for _, r in BAD_SFT_ROWS])
def test_bad_row_is_skipped_and_logged(tmp_path, tiny_tokenizer, caplog, bad, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT, bad, GOOD_SFT, bad])
    with caplog.at_level(logging.WARNING, logger="rlhf.data.datasets"):
        ds = load_sft_dataset(path, tiny_tokenizer, DataConfig(on_error="skip"))
    assert (len(ds), ds.skipped, ds.rows_read) == (3, 2, 5)
    assert f"skipped 2 of 5 rows in {path} (first: row 3: " in caplog.text
    assert reason in caplog.text


def test_response_too_long(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "3+4=", "chosen": "7", "rejected": "no" * 20}])
    with pytest.raises(DataError, match=r"pref\.jsonl: row 1: rejected response has 41 tokens, limit 8"):
        load_preference_dataset(path, tiny_tokenizer, DataConfig(max_response_len=8))
    ds = load_preference_dataset(path, tiny_tokenizer, DataConfig(max_response_len=8, truncation="right"))
    assert len(ds[0].rejected_ids) == 8


def test_bad_preference_row_in_parquet(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    rows = [{"prompt": "3+4=", "chosen": "7", "rejected": "8"}, {"prompt": "3+4=", "chosen": "7", "rejected": None}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"pairs\.parquet: row 2: missing field 'rejected'"):
        load_preference_dataset(path, tiny_tokenizer, DataConfig())


def test_missing_file(tmp_path, tiny_tokenizer):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match=rf"^{path}: path does not exist$"):
        load_prompt_dataset(path, tiny_tokenizer, DataConfig(on_error="skip"))


def test_auto_detects_from_the_first_usable_row(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "?"}, GOOD_SFT, {"prompt": "1+1="}])
    with pytest.raises(DataError, match=r"d\.jsonl: row 1: cannot detect the SFT data format: the row has keys \[text\]"):
        load_sft_dataset(path, tiny_tokenizer, DataConfig())
    ds = load_sft_dataset(path, tiny_tokenizer, DataConfig(on_error="skip"))
    # Row 3 is then read as prompt_completion and lacks its completion.
    assert (len(ds), ds.skipped, ds.format) == (1, 2, "prompt_completion")


def test_wrong_kind_of_data(tmp_path, tiny_tokenizer, tiny_assets):
    with pytest.raises(DataError, match=r"row 1: cannot detect the SFT data format \(it looks like format 'prompt', "
                       r"which cannot make SFT examples\)"):
        load_sft_dataset(tiny_assets["prompts_train"], tiny_tokenizer, DataConfig())
    with pytest.raises(DataError, match=r"data.format: format 'prompt' cannot be used for preference data"):
        load_preference_dataset(tiny_assets["prompts_train"], tiny_tokenizer, DataConfig(format="prompt", on_error="skip"))


def test_no_usable_rows(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": ""}, {"prompt": 3}])
    with pytest.raises(DataError, match=r"bad\.jsonl: no usable prompt examples: all 2 rows were skipped \(first: row 1: empty prompt"):
        load_prompt_dataset(path, tiny_tokenizer, DataConfig(on_error="skip"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no usable prompt examples: it has no rows"):
        load_prompt_dataset(empty, tiny_tokenizer, DataConfig())


def test_saved_dataset_dict(tmp_path, tiny_tokenizer):
    import datasets

    rows = [GOOD_SFT, {"prompt": "1+1=", "completion": "2"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert len(load_sft_dataset(tmp_path / "dd", tiny_tokenizer, DataConfig())) == 2
    assert len(load_sft_dataset(tmp_path / "dd", tiny_tokenizer, DataConfig(), split="test")) == 1
