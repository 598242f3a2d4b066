"""EpochSampler: seeded epochs that cover the data, and a resume that continues the exact order."""

import itertools

import pytest

from rlhf.data.datasets import EpochSampler


def take(sampler, k):
    return [next(sampler) for _ in range(k)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    sampler = EpochSampler(10, 2, seed=3)
    first, second = take(sampler, 5), take(sampler, 5)
    assert sorted(itertools.chain(*first)) == list(range(10))
    assert sorted(itertools.chain(*second)) == list(range(10))
    assert first != second
    assert sampler.epoch == 1


def test_same_seed_same_order_other_seed_other_order():
    assert take(EpochSampler(50, 5, seed=1), 25) == take(EpochSampler(50, 5, seed=1), 25)
    assert take(EpochSampler(50, 5, seed=1), 10) != take(EpochSampler(50, 5, seed=2), 10)


def test_no_shuffle_and_drop_last():
    assert take(EpochSampler(5, 2, shuffle=False), 4) == [[0, 1], [2, 3], [0, 1], [2, 3]]
    assert take(EpochSampler(5, 2, shuffle=False, drop_last=False), 4) == [[0, 1], [2, 3], [4], [0, 1]]
    assert EpochSampler(5, 2).batches_per_epoch == 2
    with pytest.raises(ValueError, match="no batch of 8"):
        EpochSampler(5, 8)


@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 5, 11])
def test_resume_continues_the_same_order(stop_after):
    reference = take(EpochSampler(9, 2, seed=7), 20)  # 4 batches per epoch; 5 epochs

    interrupted = EpochSampler(9, 2, seed=7)
    seen = take(interrupted, stop_after)
    state = interrupted.state_dict()

    resumed = EpochSampler(9, 2, seed=7)
    resumed.load_state_dict(dict(state))
    assert seen + take(resumed, 20 - stop_after) == reference


def test_state_dict_contents():
    sampler = EpochSampler(9, 2, seed=7)
    take(sampler, 6)
    assert sampler.state_dict() == {"epoch": 1, "position": 2, "n": 9, "batch_size": 2, "seed": 7, "shuffle": True, "drop_last": True}


def test_resume_with_other_settings_is_refused():
    state = EpochSampler(9, 2, seed=7).state_dict()
    with pytest.raises(ValueError, match="the checkpoint has n=9, this run has n=10"):
        EpochSampler(10, 2, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=7"):
        EpochSampler(9, 2, seed=8).load_state_dict(state)


def test_visited_indices_are_the_rows_the_first_steps_take():
    sampler = EpochSampler(9, 2, seed=7)  # 4 batches per epoch, one index left out of each epoch
    batches = take(EpochSampler(9, 2, seed=7), 6)
    assert sampler.visited_indices(3).tolist() == sorted(itertools.chain(*batches[:3]))  # a prefix of epoch 0: 6 rows
    assert sampler.visited_indices(6).tolist() == sorted(set(itertools.chain(*batches)))  # epoch 0, half of epoch 1
    assert (sampler.epoch, sampler.position) == (0, 0)  # the sampler did not move
    assert sampler.visited_indices(40).tolist() == list(range(9))  # later epochs leave other indices out
    # Unshuffled, every epoch leaves the same last index out; without drop_last it is the short last batch.
    assert EpochSampler(5, 2, shuffle=False).visited_indices(1).tolist() == [0, 1]
    assert EpochSampler(5, 2, shuffle=False).visited_indices(100).tolist() == [0, 1, 2, 3]
    assert EpochSampler(5, 2, shuffle=False, drop_last=False).visited_indices(3).tolist() == [0, 1, 2, 3, 4]
