"""Offline DPO, SFT and reward-model training on local Ray with the tiny assets, the DPO data path,
and `python -m rlhf.eval` on what they produce.

Runs that start actors are marked slow. Their numbers were measured on the 2-core CPU machine
(fp32, fixed seeds, so a rerun reproduces them): held-out DPO preference accuracy 0.875 after
100 steps of the tiny config (2 policy ranks), RM pairwise accuracy 0.75 after 40 steps, SFT
eval loss 4.69 -> 0.71 in 100 steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_ppo_e2e import stopped_after

from rlhf.config import load_config
from rlhf.data.collate import collate_preference, pairs_as_rows
from rlhf.data.errors import DataError
from rlhf.drivers.checkpoint import complete_checkpoints, read_driver_state
from rlhf.drivers.metrics import read_metrics
from rlhf.run import resolve_config, run

REPO = Path(__file__).resolve().parents[1]

DPO_STEP_METRICS = [
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
    "logps/rejected", "time/step", "throughput/pairs_per_s", "policy/grad_norm", "policy/lr", "epoch",
]
DATA = {"sft": ("sft_train", "sft_eval"), "dpo": ("pref_train", "pref_eval"), "rm": ("pref_train", "pref_eval"),
        "kto": ("pref_train", "pref_eval")}


def tiny_config(algo: str, assets: str, out: Path | None, *extra: str, load=resolve_config):
    """configs/tiny/<algo>.yaml pointed at the session's tiny assets (and ``out``)."""
    root = Path(assets)
    train, held_out = DATA[algo]
    overrides = [
        f"tiny_assets={root}",
        f"model.policy={root / 'policy'}",
        f"data.train={root / 'data' / (train + '.jsonl')}",
        f"data.eval={root / 'data' / (held_out + '.jsonl')}",
        f"logging.output_dir={out or root / 'unused'}",
        "logging.wandb.mode=disabled",
        "logging.progress_bar=false",
        *extra,
    ]
    return load(str(REPO / "configs" / "tiny" / f"{algo}.yaml"), overrides)


def evals(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in history if key in row]


# -- DPO --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_live(ray_session, tiny_assets_dir, tmp_path_factory):
    """The tiny DPO config, 100 steps with a live reference actor and the policy as 2 data-parallel ranks."""
    out = tmp_path_factory.mktemp("dpo") / "live"
    cfg = tiny_config("dpo", tiny_assets_dir, out, "resources.policy.num_actors=2", "trainer.micro_batch_size=16",
                      "resources.policy.cpus_per_actor=0.5", "algorithm.dpo.precompute_ref_logprobs=false")
    result = run(cfg)
    return out, result


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy(dpo_live, tiny_assets, capsys):
    out, result = dpo_live
    history = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in history] == list(range(0, 101))
    for name in DPO_STEP_METRICS:
        assert all(name in row for row in history[1:]), name
    accuracies = evals(history, "eval/rewards/accuracies")
    assert [step for step, _ in accuracies] == list(range(0, 101, 10))  # before step 1, every 10, at the end
    assert accuracies[0][1] == 0.0  # policy == reference: every implicit reward is 0, a tie counts as wrong
    assert accuracies[-1][1] >= 0.75, accuracies
    assert history[-1]["eval/loss"] < history[0]["eval/loss"] - 0.1
    assert set(json.loads((out / "placement.json").read_text())) == {"policy", "reference"}
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step_000090", "step_000100"]
    state = read_driver_state(out / "checkpoints" / "step_000100")
    assert state["algorithm"] == "dpo" and state["step"] == 100 and state["sampler"]["epoch"] == 9
    assert "DPO finished: 100 steps" in (out / "summary.txt").read_text()

    # rlhf.eval, in this process without Ray, finds the same held-out accuracy from the saved model.
    from rlhf.eval import main as eval_main

    report = out / "eval.json"
    assert eval_main([str(out), "--data", tiny_assets["pref_eval"], "--reference", tiny_assets["policy"],
                      "--task", "rlhf.tasks.arithmetic:score", "--json", str(report), "--show", "0"]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["preference/accuracy"] == pytest.approx(accuracies[-1][1])
    assert metrics["preference/dpo_loss"] == pytest.approx(history[-1]["eval/loss"], rel=1e-4)
    assert metrics["generation/prompts"] == 20 and 0 <= metrics["task/accuracy"] <= 1
    assert "preference/accuracy" in capsys.readouterr().out


def first_batches(seed: int, n: int, batch: int, steps: int) -> list[int]:
    """The training rows the first ``steps`` batches of epoch 0 take: its seeded permutation's first steps*batch."""
    return sorted(np.random.default_rng([seed, 0]).permutation(n)[: steps * batch].tolist())


@pytest.mark.slow
def test_dpo_precomputed_reference_gives_the_live_step(dpo_live, tiny_assets_dir, tmp_path):
    _, live = dpo_live
    from rlhf.drivers.dpo import DPODriver
    from rlhf.drivers.reference_scoring import REFERENCE_CACHE

    out = tmp_path / "pre"
    overrides = ("resources.policy.num_actors=2", "trainer.micro_batch_size=16", "resources.policy.cpus_per_actor=0.5",
                 "algorithm.dpo.precompute_ref_logprobs=true")
    driver = DPODriver(tiny_config("dpo", tiny_assets_dir, out, *overrides, "trainer.max_steps=1"))
    history = driver.run()["history"]
    # One step of 32 of the 320 pairs (seed 1): only its pairs are scored; the others hold NaN. The eval set is whole.
    step_1 = first_batches(seed=1, n=320, batch=32, steps=1)
    assert driver.train_scored.nonzero().flatten().tolist() == step_1
    assert load_file(str(out / REFERENCE_CACHE))["train_scored"].nonzero().flatten().tolist() == step_1
    assert driver.train_ref[step_1].isfinite().all() and driver.train_ref.isnan().sum() == 2 * (320 - 32)
    assert driver.eval_ref.shape == (len(driver.eval_data), 2) and driver.eval_ref.isfinite().all()
    # The reference is the initial policy: the policy scored the pairs before its first update, no reference actor ran.
    assert set(json.loads((out / "placement.json").read_text())) == {"policy"}
    live_step, pre_step = live["history"][1], history[1]
    assert pre_step["step"] == live_step["step"] == 1
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert pre_step[key] == pytest.approx(live_step[key], rel=1e-5, abs=1e-6), key
    assert history[0]["eval/loss"] == pytest.approx(live["history"][0]["eval/loss"], rel=1e-6)

    # A resumed run with one step more reads the first run's logprobs back and scores step 2's new pairs, before the
    # checkpoint replaces the initial policy's weights; its step 2 is the uninterrupted live run's.
    first_ref = driver.train_ref.clone()
    resumed = DPODriver(tiny_config("dpo", tiny_assets_dir, out, *overrides, "trainer.max_steps=2"))
    resumed_history = resumed.run()["history"]
    assert [row["step"] for row in resumed_history] == [0, 1, 2]  # the first run's rows, then step 2
    assert resumed.train_scored.nonzero().flatten().tolist() == first_batches(seed=1, n=320, batch=32, steps=2)
    assert torch.equal(resumed.train_ref[step_1], first_ref[step_1])
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert resumed_history[2][key] == pytest.approx(live["history"][2][key], rel=1e-5, abs=1e-6), key


def test_reference_cache_without_a_mask_holds_every_row(tiny_assets_dir, tmp_path):
    from rlhf.drivers.dpo import DPODriver
    from rlhf.drivers.reference_scoring import REFERENCE_CACHE

    driver = DPODriver(tiny_config("dpo", tiny_assets_dir, tmp_path, "trainer.max_steps=1"))
    driver.sampler, driver.total_steps = driver.read_data()  # what `Driver.run` does while the actors start
    cache = tmp_path / REFERENCE_CACHE
    old = {"train": torch.arange(640.0).view(320, 2), "eval": torch.zeros(40, 2)}  # the format before the mask
    save_file(old, str(cache), metadata={"fingerprint": driver._reference_fingerprint()})
    written = cache.stat().st_mtime_ns
    driver.precompute_reference()  # every row is cached: nothing to score, no actor needed, the file is kept
    assert driver.train_scored.all() and torch.equal(driver.train_ref, old["train"])
    assert cache.stat().st_mtime_ns == written
    assert torch.equal(driver.precomputed_reference([5, 0]), torch.tensor([[10.0, 11.0], [0.0, 1.0]]))


def test_a_row_the_precompute_skipped_is_never_trained_on(tiny_assets_dir, tmp_path):
    from rlhf.drivers.dpo import DPODriver
    from rlhf.drivers.reference_scoring import REFERENCE_CACHE

    driver = DPODriver(tiny_config("dpo", tiny_assets_dir, tmp_path, "trainer.max_steps=1"))
    driver.sampler, driver.total_steps = driver.read_data()  # what `Driver.run` does while the actors start
    scored = torch.zeros(320, dtype=torch.bool)
    scored[:2] = True
    train = torch.full((320, 2), float("nan"))
    train[:2] = 1.0
    save_file({"train": train, "train_scored": scored, "eval": torch.zeros(40, 2)}, str(tmp_path / REFERENCE_CACHE),
              metadata={"fingerprint": driver._reference_fingerprint()})
    assert driver._load_reference_cache(tmp_path / REFERENCE_CACHE)
    assert torch.equal(driver.precomputed_reference([1, 0]), torch.ones(2, 2))
    with pytest.raises(RuntimeError, match=r"training rows \[2, 7\] were not precomputed"):
        driver.precomputed_reference([0, 2, 7])


@pytest.mark.slow
def test_dpo_lora_with_reference_from_base(ray_session, tiny_assets, tiny_assets_dir, tmp_path):
    out = tmp_path / "lora"
    cfg = tiny_config("dpo", tiny_assets_dir, out, "model.lora.enabled=true", "model.lora.rank=4", "model.reference_from_base=true",
                      "trainer.max_steps=4", "trainer.learning_rate=1e-2", "trainer.eval_interval=0")
    history = run(cfg)["history"]
    assert set(json.loads((out / "placement.json").read_text())) == {"policy"}  # no reference actor
    assert [row["step"] for row in history] == [0, 1, 2, 3, 4]
    # A new adapter is the identity: before the first update the policy is its base, the reference.
    assert history[0]["eval/loss"] == pytest.approx(0.6931, abs=1e-4)
    assert history[1]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert history[-1]["eval/rewards/accuracies"] > 0.5

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.models.forward import masked_sequence_logprobs

    assert (out / "policy" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_assets["policy"]).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_assets["policy"]), out / "policy").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "policy" / "merged").eval()
    driver_cfg = tiny_config("dpo", tiny_assets_dir, None, load=lambda p, o: load_config(p, o, validate_paths=False))
    from rlhf.drivers.dpo import DPODriver

    driver = DPODriver(driver_cfg)
    driver.read_data()
    pairs = driver.eval_data
    rows = pairs_as_rows(collate_preference(list(pairs)[:8], 0))
    with torch.no_grad():
        logps = {name: masked_sequence_logprobs(m, rows["input_ids"], rows["attention_mask"], rows["loss_mask"])
                 for name, m in (("base", base), ("adapted", adapted), ("merged", merged))}
    torch.testing.assert_close(logps["adapted"], logps["merged"], atol=1e-4, rtol=0)
    assert not torch.allclose(logps["adapted"], logps["base"], atol=1e-3)  # the adapter was trained


# -- SFT ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lowers_eval_loss_and_resumes_exactly(ray_session, tiny_assets_dir, tmp_path):
    out = tmp_path / "sft"
    cfg = tiny_config("sft", tiny_assets_dir, out, "trainer.num_epochs=20")
    history = run(cfg)["history"]
    losses = evals(history, "eval/loss")
    assert [step for step, _ in losses] == [0, 100]
    assert losses[-1][1] < 0.2 * losses[0][1], losses
    assert all(row["throughput/tokens_per_s"] > 0 and "loss" in row for row in history[1:])
    # The trainer started before the driver read the data, and its cosine schedule still spans the 100 steps the
    # data make (80 examples / 16 x 20 epochs): step 55 used the lr of optimizer step 54, 44 of 90 past warm-up.
    t = cfg.trainer
    assert history[55]["policy/lr"] == pytest.approx(t.learning_rate * 0.5 * (1 + math.cos(math.pi * 44 / 90)), rel=1e-6)
    # Start-up: the first step's row and the summary say where the time went, phase by phase.
    assert 0 < history[1]["time/startup"] < history[1]["time/to_first_step"]
    line = next(x for x in (out / "summary.txt").read_text().splitlines() if x.startswith("start-up: "))
    phases = [part.rsplit(" ", 1)[0] for part in line.split("(", 1)[1].rstrip(")").split(", ")]
    assert phases == ["python", "ray", "placement", "data while roles start", "roles", "prepare", "eval at start",
                      "first step"], line

    # Resume: the run as it stood right after its step-3 checkpoint continues exactly as the
    # uninterrupted 6-step run did (data order, optimizer and lr schedule).
    common = ["trainer.max_steps=6", "trainer.lr_scheduler=constant", "trainer.warmup_steps=0", "trainer.eval_interval=0",
              "checkpoint.interval=3"]
    straight = run(tiny_config("sft", tiny_assets_dir, tmp_path / "straight", *common))["history"]
    split = stopped_after(tmp_path / "straight", 3, tmp_path / "split")
    resumed = run(tiny_config("sft", tiny_assets_dir, split, *common))["history"]
    assert [row["step"] for row in resumed] == list(range(0, 7))
    for a, b in zip(straight[1:], resumed[1:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])
    assert resumed[-1]["eval/loss"] == pytest.approx(straight[-1]["eval/loss"], rel=1e-6)


@pytest.mark.slow
def test_dead_trainer_fails_the_run_naming_step_and_role(ray_session, tiny_assets_dir, tmp_path):
    import ray

    from rlhf.drivers.sft import SFTDriver
    from rlhf.workers.group import RoleDiedError

    class KilledAtStep3(SFTDriver):
        def train_step(self, indices):
            if self.step == 3:
                ray.kill(self.trainer.actors[0], no_restart=True)
            return super().train_step(indices)

    out = tmp_path / "dies"
    driver = KilledAtStep3(tiny_config("sft", tiny_assets_dir, out, "trainer.max_steps=5", "checkpoint.interval=2",
                                       load=lambda p, o: load_config(p, o, validate_paths=False)))
    with pytest.raises(RoleDiedError, match=r"^step 3: policy actor 0 died during sft_step"):
        driver.run()
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_000002"]  # intact
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


# -- reward model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rm_learns_pairs_and_serves_as_ppo_reward(ray_session, tiny_assets, tiny_assets_dir, tmp_path):
    out = tmp_path / "rm"
    history = run(tiny_config("rm", tiny_assets_dir, out))["history"]
    for name in ("loss", "accuracy", "time/step", "throughput/pairs_per_s", "reward/grad_norm"):
        assert all(name in row for row in history[1:]), name
    accuracy = evals(history, "eval/accuracy")
    assert accuracy[-1][1] >= 0.7, accuracy
    assert history[-1]["eval/loss"] < history[0]["eval/loss"]

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "reward")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1

    # As PPO's model.reward: the reward role scores prompt+response sequences [B]; on the held-out
    # pairs in PPO's layout it ranks them exactly as the RM eval did.
    from rlhf.data.padding import build_sequence_batch
    from rlhf.drivers.rm import RMDriver
    from rlhf.workers.reward import RewardWorker

    ppo_cfg = load_config(str(REPO / "configs" / "tiny" / "ppo.yaml"), [
        f"model.policy={tiny_assets['policy']}", f"model.reward={out / 'reward'}", "model.reward_fn=null",
        f"data.train={tiny_assets['prompts_train']}", f"data.eval={tiny_assets['prompts_eval']}",
    ])
    worker = RewardWorker(ppo_cfg)
    rm_driver = RMDriver(tiny_config("rm", tiny_assets_dir, None, load=lambda p, o: load_config(p, o, validate_paths=False)))
    rm_driver.read_data()
    pairs = rm_driver.eval_data
    pad = worker.policy_tokenizer.pad_token_id
    chosen = worker.scores(build_sequence_batch([e.prompt_ids for e in pairs], [e.chosen_ids for e in pairs], pad))
    rejected = worker.scores(build_sequence_batch([e.prompt_ids for e in pairs], [e.rejected_ids for e in pairs], pad))
    assert chosen.shape == (len(pairs),)
    assert (chosen > rejected).float().mean().item() == pytest.approx(accuracy[-1][1])

    from rlhf.eval import main as eval_main

    report = tmp_path / "rm_eval.json"
    assert eval_main([str(out), "--data", tiny_assets["pref_eval"], "--json", str(report)]) == 0
    assert json.loads(report.read_text())["metrics"]["rm/pairwise_accuracy"] == pytest.approx(accuracy[-1][1])


# -- the DPO data path (no Ray) -------------------------------------------------------------------------

PREFERENCE_ROWS = {
    "prompt_chosen_rejected": [{"prompt": "3+4=", "chosen": "7", "rejected": "8"},
                               {"prompt": "1+2=", "chosen": "3", "rejected": "three"}],
    "chat_pairs": [
        {"chosen": [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": "7"}],
         "rejected": [{"role": "user", "content": "3+4="}, {"role": "assistant", "content": "8"}]},
        {"prompt": "1+2=", "chosen": [{"role": "assistant", "content": "3"}], "rejected": [{"role": "assistant", "content": "three"}]},
    ],
    "hh_rlhf": [{"chosen": "\n\nHuman: 3+4=\n\nAssistant: 7", "rejected": "\n\nHuman: 3+4=\n\nAssistant: 8"},
                {"chosen": "\n\nHuman: 1+2=\n\nAssistant: 3", "rejected": "\n\nHuman: 1+2=\n\nAssistant: three"}],
    "stack_exchange": [{"question": "3+4=", "response_j": "7", "response_k": "8"},
                       {"question": "1+2=", "response_j": "3", "response_k": "three"}],
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_path_config(tiny_assets_dir: str, train: Path, *extra: str):
    return tiny_config("dpo", tiny_assets_dir, None, f"data.train={train}", "data.eval=null",
                       "trainer.train_batch_size=2", "trainer.micro_batch_size=1", *extra,
                       load=lambda p, o: load_config(p, o, validate_paths=False))


@pytest.mark.parametrize("fmt", sorted(PREFERENCE_ROWS))
@pytest.mark.parametrize("declared", [False, True], ids=["auto", "declared"])
def test_every_preference_format_loads_through_the_dpo_data_path(fmt, declared, tiny_assets_dir, tmp_path):
    from rlhf.drivers.dpo import DPODriver

    train = write_jsonl(tmp_path / f"{fmt}.jsonl", PREFERENCE_ROWS[fmt])
    driver = DPODriver(data_path_config(tiny_assets_dir, train, *([f"data.format={fmt}"] if declared else [])))
    sampler, total_steps = driver.read_data()
    data = driver.train_data
    assert data.format == fmt and len(data) == 2 and total_steps == 10  # 10 epochs of one batch
    tok = driver.tokenizer
    assert tok.decode(data[0].prompt_ids) == "<|user|>3+4=</s><|assistant|>"
    assert (tok.decode(data[0].chosen_ids), tok.decode(data[0].rejected_ids)) == ("7</s>", "8</s>")
    assert tok.decode(data[1].rejected_ids) == "three</s>"
    batch = collate_preference([data[i] for i in next(sampler)], driver.pad_id)
    rows = pairs_as_rows(batch)
    assert rows["input_ids"].shape[0] == 4 and rows["loss_mask"].shape == rows["input_ids"].shape
    assert rows["loss_mask"].sum().item() == sum(len(e.chosen_ids) + len(e.rejected_ids) for e in data)


@pytest.mark.parametrize("algo, overrides, message", [
    ("dpo", ["algorithm.dpo.loss_type=hinge", "algorithm.dpo.label_smoothing=0.1"], "algorithm.dpo.label_smoothing: applies only"),
    ("rm", ["model.lora.enabled=true"], "model.lora: reward-model training"),
    ("sft", ["trainer.train_batch_size=24"], "trainer.train_batch_size: 24 is not a multiple"),
])
def test_offline_config_errors_at_load(algo, overrides, message, tiny_assets_dir):
    from rlhf.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config(algo, tiny_assets_dir, None, *overrides, load=lambda p, o: load_config(p, o, validate_paths=False))


def test_malformed_preference_file_names_file_and_row(tiny_assets_dir, tmp_path):
    from rlhf.drivers.dpo import DPODriver

    rows = PREFERENCE_ROWS["prompt_chosen_rejected"] + [{"prompt": "5+5=", "chosen": "10"}]
    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        DPODriver(data_path_config(tiny_assets_dir, train)).read_data()
    assert info.value.source == str(train) and info.value.row == 3
    assert str(info.value).startswith(f"{train}: row 3: ") and "rejected" in str(info.value)

    # Too few usable pairs for one optimizer step is a data error too, not a hang or an empty run.
    train = write_jsonl(tmp_path / "short.jsonl", rows[:1])
    with pytest.raises(DataError, match="fewer than trainer.train_batch_size=2"):
        DPODriver(data_path_config(tiny_assets_dir, train)).read_data()
