"""StepPlanner: per-step shape, prefix property, world-size invariance, frame sampling, checkpoint state."""

from __future__ import annotations

import pytest

from vggt_train.data.pipeline.sampler import IndexInfo, StepPlanner, samples_fn

INFO = IndexInfo(tuple(f"seq{i}" for i in range(7)), (24, 30, 50, 24, 100, 26, 40))


def planner(**kw):
    kw = {"img_nums": (2, 24), "max_img_per_gpu": 48, "seed": 7, **kw}
    return StepPlanner(INFO, **kw)


def test_step_shape_is_deterministic_and_in_range():
    p, q = planner(aspect_range=(0.33, 1.0)), planner(aspect_range=(0.33, 1.0))
    shapes = [p.step_shape(t) for t in range(300)]
    assert shapes == [q.step_shape(t) for t in range(300)]
    assert {s for s, _ in shapes} == set(range(2, 25))  # every image count occurs
    assert all(0.33 <= a <= 1.0 and round(a, 2) == a for _, a in shapes)
    assert shapes != [planner(seed=8, aspect_range=(0.33, 1.0)).step_shape(t) for t in range(300)]
    assert all(a == 1.0 for _, a in (planner().step_shape(t) for t in range(20)))  # default aspect 1.0


def test_samples_per_rank_follows_max_img_per_gpu():
    p = planner()
    assert [p.samples_per_rank(S) for S in (2, 5, 24, 48)] == [24, 9, 2, 1]
    assert p.global_samples(5, world_size=4, accum_steps=2) == 72


def test_a_smaller_global_batch_is_a_prefix_of_a_larger_one():
    p = planner()
    big, small = p.plan(11, 40), p.plan(11, 9)
    assert (big.num_images, big.aspect_ratio) == (small.num_images, small.aspect_ratio)
    assert big.specs[:9] == small.specs
    assert len({s.aug_seed for s in big.specs}) == 40  # every sample has its own augmentation


@pytest.mark.parametrize("step", [0, 3, 17])
def test_rank_slices_cover_the_same_global_batch_for_any_world_size(step):
    p = planner()
    total = 4  # world_size x accum_steps held constant, as the trainer would to keep the global batch
    reference = None
    for world_size in (1, 2, 4):
        accum = total // world_size
        plan = p.plan(step, samples_fn(p, world_size, accum))
        ordered = []
        for micro in range(accum):
            for rank in range(world_size):
                part = plan.rank_slice(rank, world_size, micro, accum)
                assert part == list(p.rank_specs(step, rank, world_size, micro, accum).specs)
                assert len(part) == p.samples_per_rank(plan.num_images)
                ordered.extend(part)
        assert ordered == list(plan.specs)
        reference = reference or ordered
        assert ordered == reference


def test_rank_slice_rejects_bad_arguments():
    plan = planner().plan(0, 8)
    with pytest.raises(ValueError, match="rank"):
        plan.rank_slice(2, 2)
    with pytest.raises(ValueError, match="does not split"):
        plan.rank_slice(0, 3)


def test_random_frames_are_in_range_and_allow_duplicates():
    p = planner(img_nums=(24, 24))
    specs = p.plan(0, 30).specs
    for s in specs:
        n = INFO.num_frames[INFO.sequences.index(s.sequence)]
        assert len(s.frame_ids) == 24 and all(0 <= f < n for f in s.frame_ids)
    assert any(len(set(s.frame_ids)) < 24 for s in specs)
    no_dup = planner(img_nums=(24, 24), allow_duplicates=False).plan(0, 30).specs
    assert all(len(set(s.frame_ids)) == 24 for s in no_dup)
    assert len({s.sequence for s in p.plan(1, 200).specs}) == len(INFO.sequences)  # sequences uniformly at random


def test_nearby_frames_stay_around_the_anchor():
    p = planner(frame_sampling="nearby", expand_ratio=2.0, img_nums=(3, 8))
    for t in range(20):
        plan = p.plan(t, 10)
        radius = int(plan.num_images * 2.0)
        for s in plan.specs:
            anchor = s.frame_ids[0]
            assert all(abs(f - anchor) <= radius for f in s.frame_ids)


def test_state_dict_round_trip_and_config_change_warning():
    p = planner()
    p.advance(123)
    state = p.state_dict()
    assert state["step"] == 123 and state["seed"] == 7
    q = planner(seed=0)
    q.load_state_dict(state)
    assert (q.seed, q.step) == (7, 123)
    assert q.plan(123, 5) == p.plan(123, 5)
    r = planner(img_nums=(2, 8))
    with pytest.warns(UserWarning, match="img_nums"):
        r.load_state_dict(state)


@pytest.mark.parametrize("kw,match", [({"img_nums": (0, 4)}, "img_nums"), ({"aspect_range": (1.0, 0.5)}, "aspect_range"),
                                      ({"frame_sampling": "all"}, "frame_sampling"), ({"max_img_per_gpu": 1}, "max_img_per_gpu")])
def test_invalid_settings_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        planner(**kw)
