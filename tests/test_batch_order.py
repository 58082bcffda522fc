"""The training data order (docs/ARCHITECTURE.md, "Training data order"): every epoch a fresh permutation
of the whole dataset, the same global batches for any worker count, resume at a step's batch without
reading earlier windows, and the windowed (streaming) path visiting the same rows as the one-window path.

The class-sorted folder is prepared by `dctdiff prepare` (rows in listing order, as a user's labelled
folders are): the reproduction of the bug, where a batch held one or two classes.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dctdiff.data import shards
from dctdiff.data.bundled_photos import photo_crops
from dctdiff.data.row_group_reader import RowGroups, WindowReader
from dctdiff.models.config import build_config
from dctdiff.training import batch_order
from dctdiff.training.batch_order import BatchPlan, epoch_order, first_batch_ids, permutation, worker_batches
from dctdiff.training.dataset_info import load_dataset_info
from tests.prepared import write_prepared

CLASSES, PER_CLASS, BATCH = 10, 64, 32


def expected_distinct(classes: int, per_class: int, draws: int) -> float:
    """Mean number of classes among ``draws`` rows drawn without replacement from equal classes (exact)."""
    total = classes * per_class
    absent = math.comb(total - per_class, draws) / math.comb(total, draws)
    return classes * (1.0 - absent)


def distinct_classes(ids: np.ndarray) -> int:
    return len({str(i).split("/")[0] for i in ids})


def config(batch_size: int = BATCH):
    return build_config("demo", None, [f"optim.batch_size={batch_size}"])


@pytest.fixture(scope="module")
def class_folder_data(tmp_path_factory, ray_module) -> Path:
    """10 class subfolders of 64 PNGs each, prepared by `dctdiff prepare` (rows in sorted listing order)."""
    from dctdiff.commands.prepare_command import main as prepare_main

    root = tmp_path_factory.mktemp("classes")
    crops = photo_crops(CLASSES * PER_CLASS, 32, seed=3)
    for c in range(CLASSES):
        (root / "images" / f"class{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(crops[c * PER_CLASS + i]).save(root / "images" / f"class{c}" / f"{i:03d}.png")
    out = root / "data"
    assert prepare_main(["--source", f"folder:{root / 'images'}", "--output", str(out), "--preset", "demo",
                         "--no-progress"]) == 0  # fmt: skip
    return out


def test_permutation_is_a_fixed_uniform_shuffle():
    first = permutation(1000, 7, 0, 0)
    assert sorted(first.tolist()) == list(range(1000))
    assert np.array_equal(first, permutation(1000, 7, 0, 0))  # a pure function of its salts
    assert not np.array_equal(first, permutation(1000, 7, 1, 0)) and not np.array_equal(
        first, permutation(1000, 8, 0, 0)
    )
    # each element's position is uniform: over 400 salts the mean position of every element is near (n - 1) / 2
    positions = np.stack([np.argsort(permutation(10, s)) for s in range(400)])  # [400, 10]
    assert np.abs(positions.mean(axis=0) - 4.5).max() < 0.6  # 4.6 standard errors of a uniform position
    # and the pair order is fair: element 0 before element 1 about half the time
    assert 160 < int((positions[:, 0] < positions[:, 1]).sum()) < 240


def test_prepare_wrote_class_sorted_rows_and_the_old_order_was_one_class_per_batch(class_folder_data):
    """The bug's precondition: in file order a batch of 32 holds one class (two where a class ends)."""
    info = load_dataset_info(str(class_folder_data), config())
    ids = np.concatenate([shards.read_row_groups(f, list(range(len(g))), ["id"])["id"]
                          for f, g in zip(info.shard_files, info.row_groups)])  # fmt: skip
    assert [distinct_classes(ids[i : i + BATCH]) for i in range(0, len(ids), BATCH)] == [1] * (len(ids) // BATCH)


def test_batches_mix_classes_like_a_random_permutation_for_one_and_two_workers(class_folder_data):
    info = load_dataset_info(str(class_folder_data), config())
    assert info.rows == CLASSES * PER_CLASS
    plan = BatchPlan.for_run(info, seed=0, batch_size=BATCH)
    steps = 5 * plan.steps_per_epoch  # five epochs
    one = _draw(plan, info, steps, world=1)
    two = [_draw(plan, info, steps, rank=r, world=2) for r in range(2)]
    # the same global batches for 1 and 2 workers: rank 0's share, then rank 1's
    for b in range(steps):
        assert np.array_equal(one[b], np.concatenate([two[0][b], two[1][b]]))
    expected = expected_distinct(CLASSES, PER_CLASS, BATCH)  # 9.99 classes
    mean = np.mean([distinct_classes(ids) for ids in one])
    assert abs(mean - expected) / expected < 0.05, (mean, expected)
    expected_share = expected_distinct(CLASSES, PER_CLASS, BATCH // 2)  # each worker's 16 rows
    for share in two:
        mean_share = np.mean([distinct_classes(ids) for ids in share])
        assert abs(mean_share - expected_share) / expected_share < 0.05, (mean_share, expected_share)
    # every epoch visits every row once (20 batches of 32 = all 640), and two epochs differ
    epochs = [np.concatenate(one[e * plan.steps_per_epoch : (e + 1) * plan.steps_per_epoch]) for e in range(2)]
    assert all(len(set(e.tolist())) == info.rows for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])


def _draw(plan: BatchPlan, info, steps: int, start: int = 0, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    reader = WindowReader(info.shard_files, plan.groups, ["id"])
    try:
        batches = worker_batches(plan, reader, start, rank, world)
        return [next(batches)["id"] for _ in range(steps)]
    finally:
        reader.close()


def test_show_batches_prints_the_training_order_with_mixed_classes(class_folder_data):
    command = [sys.executable, "-m", "dctdiff", "train", "--preset", "demo", "--data", str(class_folder_data),
               "--set", f"optim.batch_size={BATCH}", "--dry-run", "--show-batches", "3"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["job: train", "preset: demo"] and "optim:" in lines  # print_dry_run: the resolved config first
    shown = [line.split(": ", 1) for line in lines if line.startswith("batch ")]
    assert [name for name, _ in shown] == ["batch 0", "batch 1", "batch 2"]
    info = load_dataset_info(str(class_folder_data), config())
    expected = first_batch_ids(info, 0, BATCH, 3)
    assert [ids.split() for _, ids in shown] == [e.tolist() for e in expected]
    assert all(distinct_classes(ids.split()) >= 7 for _, ids in shown)  # 10 classes, not 1 or 2


@pytest.fixture
def windowed(tmp_path, monkeypatch):
    """640 class-sorted rows in row groups of 16 (40 groups), with the one-window and the windowed plan."""
    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", 16)
    images = photo_crops(CLASSES * PER_CLASS, 16, seed=5)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    data = write_prepared(tmp_path / "data", images, labels=labels, shards=3)
    info = load_dataset_info(str(data), build_config("demo", None, ["data.resolution=16", f"optim.batch_size={BATCH}"]))
    assert [len(g) for g in info.row_groups] == [14, 14, 14]  # 214, 213, 213 rows: 13 full groups + a partial
    one_window = BatchPlan.for_run(info, seed=0, batch_size=BATCH)
    assert one_window.rows_per_window == info.rows  # 640 rows * 1.6 KB: far under MATERIALIZE_BYTES
    monkeypatch.setattr(batch_order, "MATERIALIZE_BYTES", 0)
    monkeypatch.setattr(batch_order, "WINDOW_BYTES", 100 * info.row_bytes)  # windows of >= 100 rows
    streaming = BatchPlan.for_run(info, seed=0, batch_size=BATCH)
    assert streaming.rows_per_window == 100
    return info, one_window, streaming


def _rows(plan: BatchPlan, info, steps: int, start: int = 0) -> tuple[list[dict[str, np.ndarray]], WindowReader]:
    reader = WindowReader(info.shard_files, plan.groups, ["id", "label", info.column])
    batches = worker_batches(plan, reader, start)
    try:
        return [next(batches) for _ in range(steps)], reader
    finally:
        reader.close()


def test_the_windowed_path_visits_the_same_rows_with_the_same_values(windowed):
    info, one_window, streaming = windowed
    spe = one_window.steps_per_epoch
    assert spe == 20
    for plan in (one_window, streaming):
        order = plan.order(0)
        assert sorted(order.rows.tolist()) == list(range(info.rows))  # a permutation of every row
    whole, _ = _rows(one_window, info, 2 * spe)
    parts, reader = _rows(streaming, info, 2 * spe)
    windows = [streaming.order(e).windows for e in range(2)]
    assert all(len(w) >= 5 and len(streaming.groups.global_rows(w[0])) >= 100 for w in windows)
    # read window by window, each once (then perhaps the next epoch's first, read ahead before the reader closed)
    read = [tuple(w.tolist()) for w in (*windows[0], *windows[1])]
    assert reader.read_windows[: len(read)] == read
    assert reader.read_windows[len(read) :] in ([], [tuple(streaming.order(2).windows[0].tolist())])
    for epoch in range(2):
        a = _by_id(whole[epoch * spe : (epoch + 1) * spe])
        b = _by_id(parts[epoch * spe : (epoch + 1) * spe])
        assert set(a) == set(b) and len(a) == spe * BATCH  # each row at most once; the same rows
        for row_id in a:
            assert a[row_id][0] == b[row_id][0] and np.array_equal(a[row_id][1], b[row_id][1])
    # the values are those of the shards: a row read by its id from the file equals what the batches carry
    stored = shards.read_shard(info.shard_files[1])
    values = _by_id(parts[:spe])
    for row_id, label, coefficients in zip(*stored):
        if row_id in values:
            assert values[row_id][0] == label and np.array_equal(values[row_id][1], coefficients)
    # a window mixes row groups from anywhere: batches hold several classes, though fewer than uniform
    assert np.mean([len(set(batch["label"].tolist())) for batch in parts]) > 4


def _by_id(batches: list[dict[str, np.ndarray]]) -> dict[str, tuple[int, np.ndarray]]:
    found: dict[str, tuple[int, np.ndarray]] = {}
    for batch in batches:
        for row_id, label, values in zip(batch["id"], batch["label"], batch[shards.COEFFICIENT_COLUMN]):
            assert row_id not in found
            found[str(row_id)] = (int(label), values)
    return found


@pytest.mark.parametrize("step", [7, 13, 26])  # mid-epoch, mid-epoch in a later window, in epoch 1
def test_a_resume_starts_at_its_batch_and_reads_no_earlier_window(windowed, step):
    info, _, streaming = windowed
    straight, _ = _rows(streaming, info, step + 3)
    resumed, reader = _rows(streaming, info, 3, start=step)
    for expected, got in zip(straight[step:], resumed):
        assert np.array_equal(expected["id"], got["id"])
        assert np.array_equal(expected[shards.COEFFICIENT_COLUMN], got[shards.COEFFICIENT_COLUMN])
    epoch, batch = divmod(step, streaming.steps_per_epoch)
    order = streaming.order(epoch)
    first = int(order.window_of[batch * BATCH])
    assert first > 0  # the resume point is past the epoch's first window
    earlier = {tuple(w.tolist()) for w in order.windows[:first]}
    assert reader.read_windows[0] == tuple(order.windows[first].tolist())
    assert not earlier & set(reader.read_windows)  # no discarded batch was read


def test_row_groups_index_global_rows():
    groups = RowGroups.from_counts([(3, 2), (0, 4)])  # an empty group is dropped
    assert groups.total_rows == 9 and len(groups) == 3
    assert groups.global_rows(np.array([0, 2])).tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert groups.global_rows(np.array([1])).tolist() == [3, 4]
    order = epoch_order(groups, seed=1, epoch=0, rows_per_window=4)  # windows of >= 4 rows: the 4-row group alone
    assert sorted(order.rows.tolist()) == list(range(9))
    assert sorted(len(groups.global_rows(w)) for w in order.windows) in ([4, 5], [2, 7])


@pytest.mark.parametrize("flags", [["--data", "somewhere"], ["--dry-run"]])
def test_show_batches_needs_a_dry_run_and_data(flags, capsys):
    from dctdiff.commands.train_command import main

    with pytest.raises(SystemExit) as stopped:  # argparse's exit: status 2, before anything is read
        main(["--preset", "demo", *flags, "--show-batches", "2"])
    assert stopped.value.code == 2
    assert "--show-batches needs --dry-run and --data" in capsys.readouterr().err
