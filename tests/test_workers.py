"""Role workers on tiny models: DeepSpeed data parallelism across Ray actors, scoring passes, LoRA,
saving/export, and the WorkerGroup's timeout and death errors.

Actors are few and shared per module (each one imports torch, transformers and DeepSpeed, which
costs seconds on 2 cores): a 2-rank ZeRO-2 policy, a 1-rank ZeRO-3 LoRA policy, a 1-rank critic.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import ray
import ray.cloudpickle
import torch

from rlhf.config import ConfigError, RLHFConfig
from rlhf.data.padding import build_sequence_batch
from rlhf.models.forward import response_logprobs, sequence_scores
from rlhf.models.loading import load_causal_lm, load_reward_model, load_tokenizer
from rlhf.workers.critic import CriticTrainer
from rlhf.workers.group import RoleDiedError, RoleFailedError, RoleTimeoutError, WorkerGroup
from rlhf.workers.policy import PolicyTrainer
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker

# Test-local actor classes and helper functions travel to the actors by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROMPTS = ["3+4=", "1+1=", "9+8=", "0+5="]
RESPONSES = ["7", "3", "17", "ab"]  # right, wrong number, right, letters
TEMPERATURE = 0.7


def make_config(assets, **overrides) -> RLHFConfig:
    raw = {
        "model": {"policy": assets["policy"], "reward": assets["reward"], "critic": assets["critic"], "dtype": "float32"},
        "data": {"train": assets["prompts_train"]},
        "algorithm": {"ppo": {"rollout_batch_size": 8, "mini_batch_size": 8}},
        "rollout": {"temperature": TEMPERATURE},
        "resources": {"policy": {"num_actors": 2}},
        "trainer": {"micro_batch_size": 2, "learning_rate": 1e-3, "critic_learning_rate": 1e-3, "seed": 3},
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RLHFConfig.model_validate(raw)


def make_batch(tokenizer, prompts=PROMPTS, responses=RESPONSES) -> dict:
    """The shared layout; every response ends with EOS."""
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
    return build_sequence_batch(prompt_ids, response_ids, tokenizer.pad_token_id)


def repeat_rows(batch: dict, times: int) -> dict:
    return {k: torch.cat([v] * times) for k, v in batch.items()}


def hf_logprobs(path: str, batch: dict) -> torch.Tensor:
    model = load_causal_lm(path, "float32").eval()
    with torch.no_grad():
        logp = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"].shape[1], TEMPERATURE)
    return torch.where(batch["response_mask"].bool(), logp, torch.zeros_like(logp))


def params_of(trainer) -> dict[str, torch.Tensor]:
    """Runs inside an actor (via __ray_call__): the rank's full parameters by name."""
    return {n: p.detach().clone() for n, p in trainer.module.named_parameters()}


def trainable_names(trainer) -> list[str]:
    return [n for n, p in trainer.module.named_parameters() if p.requires_grad]


def inductor_loaded(_trainer) -> bool:
    """Runs inside an actor: whether anything in its process imported torch's inductor compiler."""
    return "torch._inductor.compile_fx" in sys.modules


def on_actor(group: WorkerGroup, i: int, fn):
    return ray.get(group.actors[i].__ray_call__.remote(fn))


@pytest.fixture(scope="module")
def tokenizer(tiny_assets):
    return load_tokenizer(tiny_assets["policy"])


@pytest.fixture(scope="module")
def policy_group(ray_session, tiny_assets):
    cfg = make_config(tiny_assets, **{"trainer.zero_stage": 2})
    group = WorkerGroup(PolicyTrainer, "policy", 2, {"num_cpus": 1}, init_args=(cfg,), call_timeout_s=300)
    group.setup_distributed()
    yield group
    group.kill()


@pytest.fixture(scope="module")
def lora_zero3_group(ray_session, tiny_assets):
    cfg = make_config(
        tiny_assets,
        **{
            "trainer.zero_stage": 3,
            "resources.policy.num_actors": 1,
            "model.lora": {"enabled": True, "rank": 4, "alpha": 8},
            "model.reference_from_base": True,
            "trainer.learning_rate": 1e-2,
        },
    )
    group = WorkerGroup(PolicyTrainer, "policy", 1, {"num_cpus": 1}, init_args=(cfg,), call_timeout_s=300)
    group.setup_distributed()
    yield group
    group.kill()


def ppo_minibatch(batch: dict, old_logprobs: torch.Tensor) -> dict:
    mask = batch["response_mask"]
    # Fixed advantages of both signs: the clipped objective can only go down from ratio = 1.
    signs = torch.tensor([1.0, -1.0]).repeat(len(mask) // 2)[:, None].expand_as(mask)
    # The trainer's logprobs stand in for the engine's (algorithm.ppo.rollout_is_cap is on by default).
    return {**batch, "old_logprobs": old_logprobs, "rollout_logprobs": old_logprobs, "advantages": signs * mask}


# -- policy, 2 ranks, ZeRO-2 ---------------------------------------------------------------------


def test_policy_two_ranks_zero2(policy_group, tiny_assets, tokenizer, tmp_path):
    batch = make_batch(tokenizer)

    # Scoring: each rank gets half the rows; together they equal a plain transformers forward.
    logp = WorkerGroup.gather_cat(policy_group.scatter("logprobs", batch))
    expected = hf_logprobs(tiny_assets["policy"], batch)
    assert logp.shape == batch["response_mask"].shape
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=0)

    # The reference worker (the initial policy) agrees with the initial policy.
    cfg = make_config(tiny_assets)
    ref = ReferenceWorker(cfg).logprobs(batch)
    torch.testing.assert_close(ref, logp, atol=1e-5, rtol=0)

    # Identical shards on both ranks (the batch twice): PPO steps keep the ranks in lockstep
    # and drive the loss down on this fixed batch.
    minibatch = ppo_minibatch(repeat_rows(batch, 2), repeat_rows({"x": logp}, 2)["x"])
    history = []
    for _ in range(4):
        stats = policy_group.scatter("ppo_step", minibatch)
        assert stats[0] == pytest.approx(stats[1])  # stats are averaged across ranks
        history.append(stats[0])
    keys = {"policy/loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy", "policy/grad_norm", "policy/lr"}
    assert keys <= set(history[0])
    assert history[0]["policy/lr"] == pytest.approx(1e-3)
    assert history[0]["policy/grad_norm"] > 0
    assert history[0]["policy/approx_kl"] == pytest.approx(0, abs=1e-10)  # ratio 1 before the first update
    losses = [s["policy/loss"] for s in history]
    assert losses[-1] < losses[0] and min(losses[1:]) < losses[0], losses
    rank0, rank1 = on_actor(policy_group, 0, params_of), on_actor(policy_group, 1, params_of)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    initial = load_causal_lm(tiny_assets["policy"], "float32").state_dict()
    assert any(not torch.equal(rank0[n], initial[n]) for n in rank0)
    # The ZeRO engine came up and trained without loading inductor for DeepSpeed's unused Muon kernels
    # (~2 CPU-s per trainer process; distributed.import_deepspeed_muon_uncompiled).
    assert not on_actor(policy_group, 0, inductor_loaded)

    # Export: plain HF names, the trained weights, on rank 0 only.
    exported = policy_group.run_all("export_weights")
    assert exported[1] is None
    weights = exported[0]
    assert sorted(weights) == sorted(initial)
    for name, tensor in weights.items():
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(tensor, rank0[name], atol=0, rtol=0)

    # save_pretrained: loads with plain transformers and holds the trained weights.
    from transformers import AutoModelForCausalLM

    out = tmp_path / "policy_hf"
    assert policy_group.rank0("save_pretrained", str(out)) == str(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=0, rtol=0)
    assert (out / "tokenizer_config.json").exists()


# -- policy, 1 rank, ZeRO-3 + LoRA with the reference from the base ------------------------------


def test_policy_zero3_lora(lora_zero3_group, tiny_assets, tokenizer, tmp_path):
    group = lora_zero3_group
    batch = make_batch(tokenizer)
    base_logp = hf_logprobs(tiny_assets["policy"], batch)

    trainable = on_actor(group, 0, trainable_names)
    assert trainable and all("lora_" in n for n in trainable)

    # A freshly initialised adapter (B = 0) is the identity; train it a few steps.
    logp = group.rank0("logprobs", batch)
    torch.testing.assert_close(logp, base_logp, atol=1e-5, rtol=0)
    minibatch = ppo_minibatch(repeat_rows(batch, 2), repeat_rows({"x": logp}, 2)["x"])
    history = [group.rank0("ppo_step", minibatch) for _ in range(3)]
    assert history[0]["policy/grad_norm"] > 0 and history[0]["policy/lr"] == pytest.approx(1e-2)

    # The reference (adapter disabled) is still the base model; the policy has moved.
    ref = group.rank0("reference_logprobs", batch)
    torch.testing.assert_close(ref, base_logp, atol=1e-5, rtol=0)
    assert not torch.allclose(group.rank0("logprobs", batch), base_logp, atol=1e-4)

    # Merged export (gathered under ZeRO-3): plain names, full shapes, q/k/v/o differ from the base, rest equal.
    weights = group.rank0("export_weights")
    initial = load_causal_lm(tiny_assets["policy"], "float32").state_dict()
    assert sorted(weights) == sorted(initial)
    for name, tensor in weights.items():
        assert tensor.shape == initial[name].shape, name
        if any(f"{m}.weight" in name for m in ("q_proj", "k_proj", "v_proj", "o_proj")):
            assert not torch.equal(tensor, initial[name]), name
        else:
            assert torch.equal(tensor, initial[name]), name

    # The merged export is what the policy computes: plain HF model + exported weights == LoRA policy.
    plain = load_causal_lm(tiny_assets["policy"], "float32").eval()
    plain.load_state_dict(weights)
    with torch.no_grad():
        merged_logp = response_logprobs(plain, batch["input_ids"], batch["attention_mask"], batch["response_mask"].shape[1], TEMPERATURE)
    merged_logp = torch.where(batch["response_mask"].bool(), merged_logp, torch.zeros_like(merged_logp))
    torch.testing.assert_close(merged_logp, group.rank0("logprobs", batch), atol=1e-4, rtol=0)

    # save_pretrained: an adapter for PeftModel and a merged model for plain transformers.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora_hf"
    group.run_all("save_pretrained", str(out))
    assert (out / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=0, rtol=0)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_assets["policy"]), out).eval()
    with torch.no_grad():
        adapter_logp = response_logprobs(adapted, batch["input_ids"], batch["attention_mask"], batch["response_mask"].shape[1], TEMPERATURE)
    torch.testing.assert_close(torch.where(batch["response_mask"].bool(), adapter_logp, 0.0), merged_logp, atol=1e-4, rtol=0)

    # Checkpoint round trip without the frozen base: save, move on a step, load the saved state back.
    ckpt = tmp_path / "ckpt"
    group.run_all("save_checkpoint", str(ckpt))
    saved_next = group.rank0("ppo_step", minibatch)
    assert not torch.allclose(group.rank0("logprobs", batch), merged_logp, atol=1e-4)
    group.run_all("load_checkpoint", str(ckpt))
    torch.testing.assert_close(group.rank0("logprobs", batch), merged_logp, atol=1e-5, rtol=0)
    assert group.rank0("ppo_step", minibatch) == pytest.approx(saved_next, rel=1e-4, abs=1e-6)


# -- critic ----------------------------------------------------------------------------------------


def test_critic_value_step_and_checkpoint_resume(ray_session, tiny_assets, tokenizer, tmp_path):
    cfg = make_config(
        tiny_assets,
        **{"resources.policy.num_actors": 1, "algorithm.ppo.mini_batch_size": 4, "trainer.lr_scheduler": "linear"},
    )

    def start_critic() -> WorkerGroup:
        # The critic starts from the reward model (model.critic unset): backbone reused, token head.
        group = WorkerGroup(CriticTrainer, "critic", 1, {"num_cpus": 1}, init_args=(cfg, tiny_assets["reward"]), call_timeout_s=300)
        group.setup_distributed()
        return group

    group = start_critic()
    try:
        batch = make_batch(tokenizer)
        values = group.rank0("values", batch)
        assert values.shape == batch["response_mask"].shape
        assert torch.all(values[batch["response_mask"] == 0] == 0)
        returns = torch.linspace(-1, 1, values.numel()).reshape(values.shape) * batch["response_mask"]
        minibatch = {**batch, "old_values": values, "returns": returns}
        history = [group.rank0("value_step", minibatch) for _ in range(4)]
        assert {"value/loss", "value/clipfrac", "value/grad_norm", "value/lr"} <= set(history[0])
        assert history[0]["value/lr"] == pytest.approx(1e-3)  # linear decay from 1e-3 over the run's steps
        assert history[1]["value/lr"] < history[0]["value/lr"]
        losses = [s["value/loss"] for s in history]
        assert losses[-1] < losses[0], losses

        group.run_all("save_checkpoint", str(tmp_path / "ckpt"))
        expected_values = group.rank0("values", batch)
        expected_next = group.rank0("value_step", minibatch)
        out = tmp_path / "critic_hf"
        group.rank0("save_pretrained", str(out))
    finally:
        group.kill()
    from transformers import AutoModelForTokenClassification

    assert AutoModelForTokenClassification.from_pretrained(out).config.num_labels == 1

    # A fresh engine resumes weights, optimizer moments and the lr schedule: the next step is the same.
    group = start_critic()
    try:
        group.run_all("load_checkpoint", str(tmp_path / "ckpt"))
        torch.testing.assert_close(group.rank0("values", batch), expected_values, atol=1e-6, rtol=0)
        assert group.rank0("value_step", minibatch) == pytest.approx(expected_next, rel=1e-5, abs=1e-6)
        with pytest.raises(RoleFailedError, match="failed in load_checkpoint: FileNotFoundError: .*no DeepSpeed checkpoint"):
            group.rank0("load_checkpoint", str(tmp_path / "missing"))
    finally:
        group.kill()


# -- reward (in-process: plain classes) ------------------------------------------------------------


def test_reward_rule_scores(tiny_assets, tokenizer):
    cfg = make_config(tiny_assets, **{"model.reward": None, "model.reward_fn": "rlhf.tasks.arithmetic:score"})
    worker = RewardWorker(cfg)
    batch = make_batch(tokenizer)
    assert worker.decode_responses(batch) == RESPONSES  # EOS and padding skipped
    scores = worker.scores(batch, PROMPTS)
    # "7" for 3+4 is right, "3" for 1+1 a wrong number, "17" for 9+8 right, "ab" letters only.
    assert scores.tolist() == pytest.approx([1.0, 0.4, 1.0, 0.0])
    # The prompts may also ride inside the batch (what WorkerGroup.scatter splits).
    assert worker.scores({**batch, "prompts": PROMPTS}).tolist() == scores.tolist()


def test_reward_model_scores(tiny_assets, tokenizer):
    worker = RewardWorker(make_config(tiny_assets))
    batch = make_batch(tokenizer)
    scores = worker.scores(batch, PROMPTS)
    assert scores.shape == (len(PROMPTS),)
    model = load_reward_model(tiny_assets["reward"], "float32").eval()
    with torch.no_grad():
        expected = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_one_process_scores_for_reference_and_reward_under_their_own_names(ray_session, tiny_assets, tokenizer):
    """resources.share_scoring_process: one ScoringWorker actor answers both roles with what each role's own worker
    computes; a failure injected into the reward's call names the reward, and the process goes on serving both."""
    from rlhf.config import FailAtConfig
    from rlhf.workers.faults import FaultInjector
    from rlhf.workers.scoring import ScoringWorker

    cfg = make_config(tiny_assets, **{"model.reward": None, "model.reward_fn": "rlhf.tasks.arithmetic:score"})
    faults = FaultInjector([FailAtConfig(role="reward", step=1, method="scores", mode="raise")])
    shared = WorkerGroup(ScoringWorker, "reference+reward", 1, {"num_cpus": 0.4}, init_args=(cfg,), call_timeout_s=120,
                         faults=faults)
    reference, reward = (shared.view(role, ScoringWorker.ROLE_CLASSES[role]) for role in ("reference", "reward"))
    try:
        batch = make_batch(tokenizer)
        pending = reference.scatter_async("logprobs", batch), reward.scatter_async("scores", batch, PROMPTS)
        logprobs, scores = (torch.cat(p.wait()) for p in pending)
        torch.testing.assert_close(logprobs, hf_logprobs(tiny_assets["policy"], batch), atol=1e-5, rtol=0)
        assert scores.tolist() == pytest.approx([1.0, 0.4, 1.0, 0.0])  # as test_reward_rule_scores
        faults.step = 1
        with pytest.raises(RoleFailedError, match=r"^reward actor 0 failed in scores: InjectedFault"):
            reward.scatter("scores", batch, PROMPTS)
        assert torch.equal(torch.cat(reference.scatter("logprobs", batch)), logprobs)
        assert reference.actors is reward.actors is shared.actors  # one process; a restart is seen by every view
        # A fault names a method of the role's own class: the shared class answers `scores`, the reference does not.
        shared.faults = FaultInjector([FailAtConfig(role="reference", step=1, method="scores")])
        with pytest.raises(ConfigError, match=r"debug.fail_at\[0\].method: reference \(ReferenceWorker\) has no method 'scores'"):
            shared.view("reference", ReferenceWorker)
    finally:
        shared.kill()


# -- export, saving and DeepSpeed config (in-process, no engine) ------------------------------------


def test_merged_export_leaves_training_weights_alone(tiny_assets, tokenizer):
    from rlhf.config import LoraConfig
    from rlhf.models.saving import export_merged_state_dict

    model = load_causal_lm(tiny_assets["policy"], "float32", LoraConfig(enabled=True, rank=4, alpha=8)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a non-trivial adapter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = export_merged_state_dict(model)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    batch = make_batch(tokenizer)
    plain = load_causal_lm(tiny_assets["policy"], "float32").eval()
    plain.load_state_dict(weights)
    R = batch["response_mask"].shape[1]
    with torch.no_grad():
        lora_logp = response_logprobs(model, batch["input_ids"], batch["attention_mask"], R)
        plain_logp = response_logprobs(plain, batch["input_ids"], batch["attention_mask"], R)
    torch.testing.assert_close(plain_logp, lora_logp, atol=1e-5, rtol=0)


def test_deepspeed_config_and_lr_schedule():
    from rlhf.config import TrainerConfig
    from rlhf.workers.deepspeed_config import build_deepspeed_config, lr_multiplier

    trainer = TrainerConfig(zero_stage=3, micro_batch_size=2, max_grad_norm=0.5, adam_betas=(0.9, 0.99), weight_decay=0.1)
    ds = build_deepspeed_config(trainer, dtype="bfloat16", world_size=2, samples_per_step=16, learning_rate=3e-4)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 4)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"] == {"lr": 3e-4, "betas": [0.9, 0.99], "weight_decay": 0.1, "eps": 1e-8, "torch_adam": True}
    with pytest.raises(ValueError, match="not a multiple"):
        build_deepspeed_config(trainer, dtype="float32", world_size=3, samples_per_step=16, learning_rate=1.0)
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        build_deepspeed_config(trainer, dtype="float16", world_size=1, samples_per_step=2, learning_rate=1.0)

    def factors(kind, warmup, total=10):
        f = lr_multiplier(TrainerConfig(lr_scheduler=kind, warmup_steps=warmup), total)
        return [round(f(s), 6) for s in range(total)]

    assert factors("constant", 0) == [1.0] * 10
    assert factors("constant", 4)[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert factors("linear", 0) == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    cosine = factors("cosine", 2)
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[6] == pytest.approx(0.5) and cosine[-1] < 0.05
    with pytest.raises(ValueError, match="total number"):
        lr_multiplier(TrainerConfig(lr_scheduler="cosine"), None)


# -- WorkerGroup errors ----------------------------------------------------------------------------


class Sleeper:
    def __init__(self, tag: str):
        self.tag = tag

    def ping(self) -> str:
        return self.tag

    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return self.tag

    def shard_len(self, batch: dict) -> int:
        return len(batch["x"]) + len(batch["names"])

    def fail(self) -> None:
        raise ValueError("bad shard")

    def exit(self, code: int) -> str:
        if code:
            os._exit(code)
        return self.tag


def test_group_scatter_timeout_and_death(ray_session):
    group = WorkerGroup(Sleeper, "sleepy", 2, {"num_cpus": 0.1}, init_args=("hi",), call_timeout_s=60)
    try:
        group.wait_ready()
        assert group.run_all("ping") == ["hi", "hi"]
        assert group.num_actors == 2 and len(set(group.node_ids())) == 1
        assert group.run_each("sleep", [(0,), (0.1,)]) == ["hi", "hi"]
        # 5 rows over 2 actors: 3 + 2, tensors and lists alike.
        assert group.scatter("shard_len", {"x": torch.arange(5), "names": list("abcde")}) == [6, 4]
        with pytest.raises(RoleFailedError, match=r"sleepy actor [01] failed in fail: ValueError: bad shard"):
            group.run_all("fail")

        group.call_timeout_s = 1.5
        start = time.monotonic()
        with pytest.raises(RoleTimeoutError, match=r"sleepy did not answer sleep within 1.5 s"):
            group.run_all("sleep", 30)
        assert time.monotonic() - start < 10
    finally:
        group.kill()

    group = WorkerGroup(Sleeper, "sleepy", 2, {"num_cpus": 0.1}, init_args=("hi",), call_timeout_s=30)
    try:
        group.wait_ready()
        # The actor ends its own process inside a call whose result is awaited, so it is certainly
        # dead before the next call (ray.kill is asynchronous: a ping right after it may still land).
        with pytest.raises(RoleDiedError, match=r"sleepy actor 1 died during exit"):
            group.run_each("exit", [(0,), (1,)])
        with pytest.raises(RoleDiedError, match=r"sleepy actor 1 died during ping"):
            group.run_all("ping")
    finally:
        group.kill()


class BrokenInit:
    def __init__(self):
        raise FileNotFoundError("no model at /nowhere")


def test_group_reports_failed_constructor(ray_session):
    group = WorkerGroup(BrokenInit, "reward", 1, {"num_cpus": 0.1}, call_timeout_s=60)
    with pytest.raises(RoleDiedError, match=r"reward actor 0 died during __init__: .*FileNotFoundError: no model at /nowhere"):
        group.wait_ready()


def test_deepspeed_builds_its_cpu_op_with_this_environments_ninja(monkeypatch):
    """Whatever PATH a process starts with (a shell without the venv, a Ray job with it), the shm op is
    built by the same ninja, so its cached build is reused instead of rebuilt (distributed.py's docstring)."""
    import shutil

    from rlhf.workers.distributed import use_environment_ninja

    own = os.path.join(os.path.dirname(sys.executable), "ninja")
    if not os.path.exists(own):
        pytest.skip("this environment installs no ninja of its own")
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    use_environment_ninja()
    use_environment_ninja()
    assert shutil.which("ninja") == own
    assert os.environ["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), "/usr/bin", "/bin"]
