"""Bad input never produces a traceback: every config field mutated (wrong type, out of range, unknown
neighbour key) gives exit 2 and one line naming the key; truncated or corrupted data files give a
DataError naming the file (and the row), never another exception."""

from __future__ import annotations

import json
import random

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from rlhf.config import RLHFConfig
from rlhf.data.datasets import load_preference_dataset, load_prompt_dataset, load_sft_dataset
from rlhf.data.errors import DataError
from rlhf.run import main

SKIPPED = {"debug.fail_at"}  # an optional section of its own, mutated in test_faults.py


def leaf_fields(model: type[BaseModel] = RLHFConfig, prefix: str = ""):
    """(dotted key, FieldInfo) for every non-section field of the config tree."""
    for name, field in model.model_fields.items():
        key = prefix + name
        if key in SKIPPED:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_fields(annotation, key + ".")
        else:
            yield key, field


def out_of_range(field) -> object | None:
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            return bound.ge - 1
        if isinstance(bound, annotated_types.Gt):
            return bound.gt
        if isinstance(bound, annotated_types.Le):
            return bound.le + 1
        if isinstance(bound, annotated_types.Lt):
            return bound.lt
    return None


MUTATIONS = []
for _key, _field in leaf_fields():
    MUTATIONS.append((_key, "{wrong: type}", _key))
    _bad = out_of_range(_field)
    if _bad is not None:
        MUTATIONS.append((_key, str(_bad), _key))
    _section, _, _name = _key.rpartition(".")
    MUTATIONS.append((f"{_section + '.' if _section else ''}{_name}x", "1", f"unknown key '{_section + '.' if _section else ''}{_name}x'"))


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, tiny_assets) -> str:
    path = tmp_path_factory.mktemp("bad_input") / "ppo.yaml"
    data = yaml.safe_load(open("configs/tiny/ppo.yaml"))
    data.pop("tiny_assets")
    data["model"].update(policy=tiny_assets["policy"], critic=tiny_assets["critic"])
    data["data"].update(train=tiny_assets["prompts_train"], eval=tiny_assets["prompts_eval"])
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_field_mutation_is_one_line_and_exit_2(base_config, capsys):
    assert len(MUTATIONS) > 200
    for key, value, named in MUTATIONS:
        code = main([base_config, f"{key}={value}", "--print-config"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (key, value, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"config error: {base_config}: ") and named in lines[0], (key, value, err)


def test_a_role_without_cpus_or_gpus_is_a_config_error(base_config, capsys):
    assert main([base_config, "resources.reference.cpus_per_actor=0", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"config error: {base_config}: resources.reference.cpus_per_actor: an actor needs CPUs or GPUs, and this role has neither")
    assert main([base_config, "resources.reference.cpus_per_actor=0", "resources.reference.gpus_per_actor=1", "--print-config"]) == 0


LOADERS = {"prompts_train": load_prompt_dataset, "sft_train": load_sft_dataset, "pref_train": load_preference_dataset}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_truncated_or_corrupted_data_is_a_data_error(name, tiny_assets, tiny_tokenizer, tmp_path):
    from rlhf.config import DataConfig

    original = open(tiny_assets[name], "rb").read()
    rng = random.Random(name)
    cfg = DataConfig(max_prompt_len=64, max_response_len=64, truncation="right")
    errors = 0
    for trial in range(40):
        data = bytearray(original)
        if trial % 2:
            data = data[: rng.randrange(1, len(data))]  # truncated mid-file
        else:
            for _ in range(3):
                data[rng.randrange(len(data))] = rng.randrange(256)  # corrupted bytes
        path = tmp_path / f"{trial}.jsonl"
        path.write_bytes(bytes(data))
        try:
            LOADERS[name](path, tiny_tokenizer, cfg)
        except DataError as err:
            errors += 1
            assert str(err).startswith(str(path)), err
            assert "\n" not in str(err)
    assert errors >= 10  # most mutations break a row; the rest happen to stay valid


@pytest.mark.slow
def test_bad_data_in_a_run_is_one_line_exit_2_and_leaves_no_actor(ray_session, tiny_assets, tmp_path, capsys, monkeypatch):
    """The roles' actors start before the driver reads its data: a bad row still ends the run with exit 2 and
    one line naming the file and row, and the actors already starting are removed with their placement group."""
    import ray

    from rlhf.drivers.sft import SFTDriver

    roles_at_read = []
    read_data = SFTDriver.read_data

    def recording_read_data(driver):
        roles_at_read.append(sorted(driver.groups))
        return read_data(driver)

    monkeypatch.setattr(SFTDriver, "read_data", recording_read_data)
    rows = open(tiny_assets["sft_train"]).read().splitlines()
    rows[4] = json.dumps({"prompt": "0+4="})  # no completion
    train = tmp_path / "bad.jsonl"
    train.write_text("\n".join(rows) + "\n")
    config = yaml.safe_load(open("configs/tiny/sft.yaml"))
    config.pop("tiny_assets")
    config["model"]["policy"] = tiny_assets["policy"]
    config["data"].update(train=str(train), eval=None)
    config["logging"].update(output_dir=str(tmp_path / "out"), progress_bar=False, wandb={"mode": "disabled"})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    groups_before = set(ray.util.placement_group_table())

    assert main([str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"data error: {train}: row 5: missing field 'completion' (row has keys: prompt)"]
    assert roles_at_read == [["policy"]]  # the policy's actor was starting while the driver read the data
    # Removing a placement group ends every actor in it.
    run_groups = [info for pg, info in ray.util.placement_group_table().items() if pg not in groups_before]
    assert run_groups and all(info["state"] == "REMOVED" for info in run_groups)
