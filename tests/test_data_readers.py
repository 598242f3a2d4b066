"""Readers: every source type yields (1-based row, dict); bad sources and rows name file, row and reason."""

import json
import pickle

import pytest

from rlhf.data.errors import DataError
from rlhf.data.readers import read_rows

ROWS = [
    {"prompt": "1+2=", "completion": "3"},
    {"prompt": "4+4=", "completion": "8"},
    {"prompt": "9+0=", "completion": "9"},
]
CHAT_ROWS = [{"messages": [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_error_message_and_pickle():
    err = DataError("train.jsonl", 3, "missing field 'prompt'")
    assert str(err) == "train.jsonl: row 3: missing field 'prompt'"
    assert str(DataError("train.jsonl", None, "path does not exist")) == "train.jsonl: path does not exist"
    assert str(DataError(None, None, "empty response")) == "empty response"
    assert str(DataError(None, None, "empty response").located("a.jsonl", 7)) == "a.jsonl: row 7: empty response"
    again = pickle.loads(pickle.dumps(err))
    assert (again.source, again.row, again.reason) == ("train.jsonl", 3, "missing field 'prompt'")


def test_jsonl_row_numbers_are_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]))  # blank line 2, no final newline
    assert list(read_rows(path)) == [(1, ROWS[0]), (3, ROWS[1]), (4, ROWS[2])]


def test_jsonl_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "1+1=",\n' + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    assert str(path) in str(info.value) and "row 2: invalid JSON" in str(info.value)
    # With yield_errors the bad row comes back as an error and reading goes on.
    rows = list(read_rows(path, yield_errors=True))
    assert [n for n, _ in rows] == [1, 2, 3]
    assert isinstance(rows[1][1], DataError) and rows[2][1] == ROWS[1]


def test_jsonl_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"list\.jsonl: row 2: expected a JSON object, got list"):
        list(read_rows(path))


def test_json_list_and_data_wrapper(tmp_path):
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS, "version": 1}))
    expected = [(i + 1, r) for i, r in enumerate(ROWS)]
    assert list(read_rows(plain)) == expected
    assert list(read_rows(wrapped)) == expected


def test_json_that_is_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", ROWS)
    assert [r for _, r in read_rows(path)] == ROWS


def test_json_bad_layout_and_bad_syntax(tmp_path):
    layout = tmp_path / "obj.json"
    layout.write_text(json.dumps({"rows": ROWS}))
    with pytest.raises(DataError, match=r"obj\.json: expected a list of objects"):
        list(read_rows(layout))
    syntax = tmp_path / "broken.json"
    syntax.write_text('[{"prompt": "a"},\n  {"prompt": }]')
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON: .*line 2"):
        list(read_rows(syntax))
    element = tmp_path / "element.json"
    element.write_text(json.dumps([ROWS[0], "oops"]))
    with pytest.raises(DataError, match=r"element\.json: row 2: expected a JSON object, got str"):
        list(read_rows(element))


def test_parquet_written_with_pyarrow(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(CHAT_ROWS + CHAT_ROWS), path)
    assert list(read_rows(path)) == [(1, CHAT_ROWS[0]), (2, CHAT_ROWS[0])]


def test_parquet_written_with_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "d.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    assert list(read_rows(path)) == [(i + 1, r) for i, r in enumerate(ROWS)]


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        list(read_rows(path))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert list(read_rows(tmp_path / "ds")) == [(i + 1, r) for i, r in enumerate(ROWS)]

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert [r for _, r in read_rows(tmp_path / "dd")] == ROWS  # the 'train' split by default
    assert [r for _, r in read_rows(tmp_path / "dd", split="test")] == ROWS[:1]
    with pytest.raises(DataError, match=r"dd: has no split 'validation'; splits: test, train"):
        list(read_rows(tmp_path / "dd", split="validation"))


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: is a directory but not a datasets.save_to_disk directory"):
        list(read_rows(tmp_path / "plain"))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    assert str(info.value) == f"{path}: path does not exist"


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt\n1+1=\n")
    with pytest.raises(DataError, match=r"d\.csv: unsupported file type '\.csv'"):
        list(read_rows(path))


def test_hub_name_that_fails_to_load(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        list(read_rows("someorg/somedata"))
    message = str(info.value)
    assert message.startswith("someorg/somedata: path does not exist locally")
    assert "hub" in message and "ConnectionError: Couldn't reach" in message


def test_hub_name_that_loads(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert [r for _, r in read_rows("someorg/somedata")] == ROWS
    assert calls == [("someorg/somedata", "train")]
