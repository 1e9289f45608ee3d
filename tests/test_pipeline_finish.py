"""The two-stage batch: worker part (uint8 / float16, drawn parameters) + finish_batch. Finishing on the CPU equals
the recipe done view by view in the worker; the resize deferred to the finishing stage equals PIL's to the bit;
the jitter is shared by a sample's views exactly when cojitter says so; workers ship ~8x fewer bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_data import portrait_frames, reference_batch, tiny_dataset
from vggt_train.data.pipeline.dataset import InMemorySource, MultiViewDataset
from vggt_train import geometry
from vggt_train.data.pipeline.finish import finish_batch, is_finished
from vggt_train.data.pipeline.resample import ViewResample, pack, resample_views, unpack, vertical_first
from vggt_train.data.pipeline.sampler import SampleSpec, StepPlanner
from vggt_train.data.pipeline.transforms import AugmentConfig, ColorJitterConfig, JitterDraw, apply_jitter_

_LANCZOS, _BICUBIC = Image.Resampling.LANCZOS, Image.Resampling.BICUBIC


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.getbasetemp())


def _specs(ds, step: int, S: int, aspect_range, seed: int = 4, samples: int = 3):
    planner = StepPlanner(ds.index_info(), img_nums=(S, S), aspect_range=aspect_range, max_img_per_gpu=S * samples, seed=seed)
    plan = planner.rank_specs(step, 0, 1)
    return plan.specs, plan.aspect_ratio


def _assert_batches_close(got, ref):
    assert torch.equal(got["point_masks"], ref["point_masks"])
    torch.testing.assert_close(got["images"], ref["images"], atol=2e-6, rtol=0)  # float rounding of the jitter
    for k in ("depths", "extrinsics", "intrinsics", "cam_points", "world_points"):
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)


@pytest.mark.parametrize("resample", ["worker", "device"])
@pytest.mark.parametrize("augment,normalize,aspect_range", [(True, True, (0.5, 1.0)), (True, False, (1.0, 1.0)), (False, True, (0.75, 0.75))])
def test_finishing_equals_the_recipe_done_per_view_in_the_worker(data, resample, augment, normalize, aspect_range):
    ds = MultiViewDataset(data["root"], "train", img_size=56, augment=augment, resample=resample)
    for step in (0, 1):
        specs, aspect = _specs(ds, step, 3, aspect_range)
        raw = ds.load_batch(specs, aspect, normalize=normalize, finish=False)
        assert not is_finished(raw) and raw.depths.dtype == torch.float16
        got = finish_batch(raw)
        _assert_batches_close(got, reference_batch(ds, specs, aspect, normalize))
        assert finish_batch(got) is got  # a finished batch passes through


@pytest.mark.parametrize("resample", ["worker", "device"])
def test_finishing_equals_the_reference_through_the_landscape_rotation(data, resample):
    base = MultiViewDataset(data["root"], "train", img_size=70)
    seq = base.sequences[0]
    src = InMemorySource({seq: portrait_frames(base, seq, 4)})
    ds = MultiViewDataset.from_source(src, img_size=70, aug=AugmentConfig(landscape_check=True), resample=resample)
    specs = [SampleSpec(seq, (0, 1, 3), seed) for seed in range(6)]
    rotations = [ViewDraw.swap for spec in specs for ViewDraw in ds._draws(spec, 3)[0]]
    assert any(rotations) and not all(rotations)
    _assert_batches_close(finish_batch(ds.load_batch(specs, 0.6, normalize=True, finish=False)), reference_batch(ds, specs, 0.6, True))


def test_the_deferred_resize_gives_the_workers_images_bit_for_bit(data):
    kw = {"img_size": 56, "aug": AugmentConfig(color_jitter=None, grayscale_p=0.0)}
    worker, device = MultiViewDataset(data["root"], "train", **kw), MultiViewDataset(data["root"], "train", resample="device", **kw)
    for step in range(3):
        specs, aspect = _specs(worker, step, 4, (0.33, 1.0))
        a, b = worker.load_batch(specs, aspect, finish=False), device.load_batch(specs, aspect, finish=False)
        assert a.images is not None and b.images is None and b.windows is not None
        assert torch.equal(finish_batch(a)["images"], finish_batch(b)["images"])


def test_finishing_leaves_the_workers_batch_untouched():
    """A float32 depth source keeps float32 through the worker; finishing the same batch twice (a benchmark that
    repeats one batch) must give the same numbers, so the finishing stage never scales the shipped tensors."""
    rng = np.random.default_rng(0)
    K = np.array([[40.0, 0, 31.5], [0, 40, 23.5], [0, 0, 1]])
    E = np.concatenate([np.eye(3), [[0.1], [0.0], [0.0]]], 1)
    frames = [{"image": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "depth": rng.uniform(1, 3, (48, 64)).astype(np.float32),
               "extrinsic": E, "intrinsic": K} for _ in range(3)]
    ds = MultiViewDataset.from_source(InMemorySource({"s": frames}), img_size=28)
    raw = ds.load_batch([SampleSpec("s", (0, 1, 2), 3)], 1.0, normalize=True, finish=False)
    assert raw.depths.dtype == torch.float32
    a, b = finish_batch(raw), finish_batch(raw)
    for k in ("images", "depths", "world_points", "extrinsics"):
        assert torch.equal(a[k], b[k]), k


def test_both_stages_normalise_with_the_geometry_halves():
    """The batch normalisation is defined once (geometry): the worker's cameras are exactly
    `first_camera_frame` of the plain cameras (in float64), and the finished depths exactly the plain ones divided
    by `scene_scale` of the distances of the points seen from camera 0."""
    rng = np.random.default_rng(1)
    K = np.array([[40.0, 0, 31.5], [0, 40, 23.5], [0, 0, 1]])
    frames = []
    for _ in range(3):
        q = rng.normal(size=4)
        R = geometry.quat_to_mat(torch.tensor(q / np.linalg.norm(q), dtype=torch.float32)).double().numpy()
        E = np.concatenate([R, rng.normal(size=(3, 1)).astype(np.float32)], 1)  # float32-exact cameras
        frames.append({"image": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
                       "depth": rng.uniform(1, 3, (48, 64)).astype(np.float32), "extrinsic": E, "intrinsic": K})
    ds = MultiViewDataset.from_source(InMemorySource({"s": frames}), img_size=28, augment=False)
    spec = [SampleSpec("s", (2, 0, 1), 0)]
    plain, normed = (ds.load_batch(spec, 1.0, normalize=n, finish=False) for n in (False, True))
    rigid = geometry.first_camera_frame(plain.extrinsics.double()).float()
    assert torch.equal(normed.extrinsics, rigid)
    depths = plain.depths.float()
    _, _, dist = geometry.unproject_batch(depths, plain.intrinsics, rigid, with_norm=True)
    scale = geometry.scene_scale(dist, (depths > 0) & torch.isfinite(dist))
    assert torch.equal(finish_batch(normed)["depths"], depths / scale.view(-1, 1, 1, 1))
    assert not torch.equal(scale, torch.ones_like(scale))


def test_workers_ship_far_fewer_bytes(data):
    ds = MultiViewDataset(data["root"], "train", img_size=56)
    specs, aspect = _specs(ds, 0, 4, (1.0, 1.0))
    raw = ds.load_batch(specs, aspect, normalize=True, finish=False)

    def nbytes(batch):
        return sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))

    assert nbytes(finish_batch(raw)) > 7 * nbytes(raw.tensors())  # uint8 image + float16 depth vs float32 images and points


@pytest.mark.parametrize("cojitter_ratio,shared", [(0.0, True), (1.0, False)])
def test_jitter_is_shared_by_the_views_of_a_sample_exactly_when_cojitter_says_so(data, cojitter_ratio, shared):
    """Official rule: one jitter for all views when random() > cojitter_ratio. 0 forces sharing, 1 forbids it;
    the finished images then differ exactly as the shipped parameters do."""
    aug = AugmentConfig(scale_range=None, rescale_aug=False, cojitter_ratio=cojitter_ratio,
                        color_jitter=ColorJitterConfig(p=1.0), grayscale_p=0.0)
    ds = MultiViewDataset(data["root"], "train", img_size=28, aug=aug)
    seq = ds.sequences[0]
    for seed in range(8):
        raw = ds.load_batch([SampleSpec(seq, (5, 5, 5), seed)], 1.0, finish=False)  # the same frame three times
        rows = raw.plan.jitter
        images = finish_batch(raw)["images"][0]
        for v in (1, 2):
            assert np.array_equal(rows[v], rows[0]) == shared
            assert torch.equal(images[v], images[0]) == shared


def test_official_cojitter_ratio_shares_the_jitter_with_probability_0_7(data):
    ds = MultiViewDataset(data["root"], "train", img_size=28)
    jitters = [ds._draws(SampleSpec(ds.sequences[0], (0, 1), seed), 2)[1] for seed in range(600)]
    shared = np.mean([j[0] == j[1] for j in jitters])
    assert 0.64 < shared < 0.76, shared


def test_batched_jitter_equals_the_per_view_reference():
    rng = np.random.default_rng(0)
    cj = ColorJitterConfig()
    draws = [JitterDraw.draw(rng, cj, 0.3) for _ in range(9)]
    draws = draws[:1] * 3 + draws[1:] + draws[2:3] * 2 + [JitterDraw(grayscale=True), JitterDraw()]  # runs, single views
    x = torch.rand(len(draws), 3, 12, 16)
    ref = torch.stack([d(x[i].clone()) for i, d in enumerate(draws)])
    torch.testing.assert_close(apply_jitter_(x.clone(), [d.row() for d in draws]), ref, atol=2e-6, rtol=0)


def test_get_sample_returns_every_key_finished(data):
    ds = MultiViewDataset(data["root"], "train", img_size=28, resample="device")
    s = ds.get_sample(ds.sequences[0], [0, 4], 1.0, aug_seed=1)
    assert {"images", "depths", "extrinsics", "intrinsics", "cam_points", "world_points", "point_masks"} <= set(s)
    assert not {"plan", "windows", "resample_table"} & set(s) and s["images"].dtype == torch.float32


# --------------------------------------------------------------------------------------- PIL's resize, on a device
def _device_resize(arr: np.ndarray, box, out_wh, filter_name: str) -> np.ndarray:
    H, W = arr.shape[:2]
    plan = ViewResample((W, H), box, out_wh, filter_name)
    r0, r1, c0, c1 = plan.window
    window = torch.from_numpy(np.ascontiguousarray(arr[r0:r1, c0:c1]))[None]
    tables = unpack(pack([plan], (out_wh[1], out_wh[0])), (out_wh[1], out_wh[0]), out_wh[0])
    return resample_views(window, *tables, plan.vertical_first)[0].numpy()


def test_device_resize_is_pils_to_the_bit():
    """Random sizes, boxes and outputs (down and up, both filters, both of Pillow's pass orders)."""
    rng = np.random.default_rng(0)
    orders = set()
    for trial in range(150):
        H, W = (int(v) for v in rng.integers(8, 120, 2))
        arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        x0, y0 = rng.uniform(0, 0.3 * W), rng.uniform(0, 0.3 * H)
        box = (0, 0, W, H) if trial % 5 == 0 else (x0, y0, rng.uniform(x0 + 1, W), rng.uniform(y0 + 1, H))
        out_wh = (int(rng.integers(1, 100)), int(rng.integers(1, 100)))
        name = "lanczos" if trial % 3 else "bicubic"
        ref = np.asarray(Image.fromarray(arr).resize(out_wh, _LANCZOS if name == "lanczos" else _BICUBIC, box=box))
        assert np.array_equal(_device_resize(arr, box, out_wh, name), ref), (trial, (H, W), box, out_wh, name)
        orders.add(vertical_first((W, H), out_wh))
    assert True in orders or not vertical_first((120, 120), (80, 10))  # the vertical-first rule, where Pillow has it


def test_device_resize_of_views_of_different_windows_in_one_call():
    rng = np.random.default_rng(1)
    srcs = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)]
    boxes = [(3.5, 2.25, 70.0, 58.0), (0.0, 5.0, 60.0, 45.5)]
    plans = [ViewResample((a.shape[1], a.shape[0]), box, (30, 24), "lanczos") for a, box in zip(srcs, boxes)]
    assert len({p.vertical_first for p in plans}) == 1
    windows = torch.zeros(2, 60, 80, 3, dtype=torch.uint8)
    for i, (a, p) in enumerate(zip(srcs, plans)):
        r0, r1, c0, c1 = p.window
        windows[i, :r1 - r0, :c1 - c0] = torch.from_numpy(a[r0:r1, c0:c1].copy())
    out = resample_views(windows, *unpack(pack(plans, (24, 30)), (24, 30), 30), plans[0].vertical_first)
    for i, (a, box) in enumerate(zip(srcs, boxes)):
        assert np.array_equal(out[i].numpy(), np.asarray(Image.fromarray(a).resize((30, 24), _LANCZOS, box=box)))
