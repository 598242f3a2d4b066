"""Fault injection (debug.fail_at): the config section, the injector's choice of call, and real failures in actors."""

import sys
import time

import pytest
import ray.cloudpickle
import yaml

from rlhf.config import ConfigError, FailAtConfig, load_config
from rlhf.workers.faults import FaultInjector, InjectedFault

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors get this module's classes by value


@pytest.fixture
def cfg_path(tmp_path):
    (tmp_path / "policy").mkdir()
    (tmp_path / "train.jsonl").write_text('{"prompt": "1+1="}\n')
    data = {
        "model": {"policy": str(tmp_path / "policy"), "reward_fn": "rlhf.tasks.arithmetic:score", "critic": str(tmp_path / "policy")},
        "data": {"train": str(tmp_path / "train.jsonl")},
        "algorithm": {"name": "ppo", "ppo": {"rollout_batch_size": 8, "mini_batch_size": 8}},
        "trainer": {"micro_batch_size": 4},
        "resources": {"policy": {"num_actors": 2}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_fail_at_from_overrides(cfg_path):
    cfg = load_config(cfg_path, ["debug.fail_at.role=policy", "debug.fail_at.step=3", "debug.fail_at.mode=exit",
                                 "debug.fail_at.actor=1", "debug.fail_at.method=ppo_step"])
    assert cfg.debug.fail_at == [FailAtConfig(role="policy", step=3, mode="exit", actor=1, method="ppo_step")]
    assert load_config(cfg_path).debug.fail_at == []


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["debug.fail_at.role=critc", "debug.fail_at.step=1"], "debug.fail_at[0].role: Input should be 'driver', 'policy'"),
        (["debug.fail_at.role=critic"], "debug.fail_at[0].step: Field required"),
        (["debug.fail_at.role=critic", "debug.fail_at.step=0"], "debug.fail_at[0].step: Input should be greater than or equal to 1"),
        (["debug.fail_at.role=critic", "debug.fail_at.step=1", "debug.fail_at.mode=crash"], "debug.fail_at[0].mode: Input should be"),
        (["debug.fail_at.role=policy", "debug.fail_at.step=1", "debug.fail_at.actor=2"],
         "debug.fail_at[0].actor: policy has 2 actor(s), so actor must be < 2, got 2"),
        (["debug.fail_at.role=rollout", "debug.fail_at.step=1", "debug.fail_at.actor=1"], "rollout has 1 actor(s)"),
        (["debug.fail_at.role=driver", "debug.fail_at.step=1", "debug.fail_at.mode=hang"], "debug.fail_at[0].mode: the driver cannot hang"),
        (["debug.fail_at.role=driver", "debug.fail_at.step=1", "debug.fail_at.method=save_checkpiont"],
         "debug.fail_at[0].method: driver points are train_step, save_checkpoint, not 'save_checkpiont' (did you mean 'save_checkpoint'?)"),
        (["debug.fail_at.role=critic", "debug.fail_at.step=1", "debug.fail_at.mode=sigterm"], "sigterm applies to role driver only"),
        (["debug.fail_at.role=critic", "debug.fail_at.step=1", "debug.fail_at.when=now"], "unknown key 'debug.fail_at[0].when'"),
    ],
)
def test_bad_fail_at_is_one_line(cfg_path, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_path, overrides)
    assert expected in str(err.value) and str(err.value).startswith(str(cfg_path))


def test_injector_fires_once_on_the_chosen_call():
    injector = FaultInjector([FailAtConfig(role="critic", step=2, method="value_step", actor=1, mode="hang")])
    for step, role, actor, method in [(1, "critic", 1, "value_step"), (2, "critic", 0, "value_step"),
                                      (2, "critic", 1, "values"), (2, "policy", 1, "value_step")]:
        injector.step = step
        assert injector.actor_fault(role, actor, method) is None
    injector.step = 2
    assert injector.actor_fault("critic", 1, "value_step") == (
        "hang", "injected fault (debug.fail_at): critic actor 1 hang in value_step at step 2")
    assert injector.actor_fault("critic", 1, "value_step") is None  # once only
    assert FaultInjector([]).actor_fault("critic", 0, "values") is None


def test_several_faults_each_fire_once_at_their_own_call(cfg_path):
    cfg = load_config(cfg_path, ["debug.fail_at=[{role: rollout, step: 2, method: generate, mode: exit}, "
                                 "{role: driver, step: 3, method: train_step, mode: sigterm}]"])
    injector = FaultInjector(cfg.debug.fail_at)
    injector.step = 2
    assert injector.actor_fault("rollout", 0, "generate") == (
        "exit", "injected fault (debug.fail_at): rollout actor 0 exit in generate at step 2")
    assert injector.actor_fault("rollout", 0, "generate") is None  # the retried call goes through
    injector.driver_point("train_step")  # the driver's fault is due at step 3, not now
    injector.step = 3
    assert injector.actor_fault("rollout", 0, "generate") is None
    with pytest.raises(ConfigError, match=r"debug.fail_at\[1\].mode: sigterm applies to role driver only"):
        load_config(cfg_path, ["debug.fail_at=[{role: rollout, step: 2}, {role: critic, step: 3, mode: sigterm}]"])


def test_injector_without_method_takes_the_roles_first_call_of_the_step():
    injector = FaultInjector([FailAtConfig(role="rollout", step=3)])
    injector.step = 3
    assert injector.actor_fault("rollout", 0, "generate") == (
        "raise", "injected fault (debug.fail_at): rollout actor 0 raise in generate at step 3")
    assert injector.actor_fault("rollout", 0, "load_weights") is None


def test_driver_point_raise_and_unknown_method():
    injector = FaultInjector([FailAtConfig(role="driver", step=2, method="save_checkpoint")])
    injector.step = 2
    injector.driver_point("train_step")  # not the chosen point
    with pytest.raises(InjectedFault, match=r"driver actor 0 raise in save_checkpoint at step 2"):
        injector.driver_point("save_checkpoint")

    from rlhf.workers.critic import CriticTrainer

    injector = FaultInjector([FailAtConfig(role="critic", step=1, method="valus")])
    injector.check_methods("policy", CriticTrainer)  # another role: not this class's business
    with pytest.raises(ConfigError, match=r"critic \(CriticTrainer\) has no method 'valus' \(did you mean 'values'\?\)"):
        injector.check_methods("critic", CriticTrainer)


class Counter:
    def __init__(self):
        self.calls = 0

    def bump(self) -> int:
        self.calls += 1
        return self.calls


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "exit", "hang"])
def test_group_injects_the_fault_inside_the_chosen_actor(ray_session, mode):
    from rlhf.workers.group import RoleDiedError, RoleFailedError, RoleTimeoutError, WorkerGroup

    injector = FaultInjector([FailAtConfig(role="reward", step=2, method="bump", actor=1, mode=mode)])
    group = WorkerGroup(Counter, "reward", 2, {"num_cpus": 0.1}, call_timeout_s=3, faults=injector)
    try:
        group.wait_ready()
        injector.step = 1
        assert group.run_all("bump") == [1, 1]
        injector.step = 2
        expected = {
            "raise": (RoleFailedError, r"reward actor 1 failed in bump: InjectedFault: injected fault \(debug.fail_at\): "
                                       r"reward actor 1 raise in bump at step 2"),
            "exit": (RoleDiedError, r"reward actor 1 died during bump"),
            "hang": (RoleTimeoutError, r"reward did not answer bump within 3 s \(actors \[1\] still busy\)"),
        }[mode]
        start = time.monotonic()
        with pytest.raises(expected[0], match=expected[1]):
            group.run_all("bump")
        assert time.monotonic() - start < 3 + 10
        # The fault replaced the call: actor 0 counted, actor 1's method never ran.
        assert group.rank0("bump") == 3
        if mode == "raise":
            assert group.run_each("bump", [(), ()]) == [4, 2]
    finally:
        group.kill()
