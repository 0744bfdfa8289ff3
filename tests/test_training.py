"""Tests for anomaly_utils.training: datasets, fit_autoencoder's artifacts, NaN guard,
determinism, safe loading and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from anomaly_utils.errors import ArtifactError, DataError, LabError, ParameterError
from anomaly_utils.models.ae1 import build_ae1
from anomaly_utils.models.storage import load_model
from anomaly_utils.training.callbacks import EpochBackup, read_history_csv
from anomaly_utils.training.datasets import (
    anomaly_patch_dataset,
    image_dataset,
    patch_dataset,
    set_dataset_epoch,
    val_patch_dataset,
)
from anomaly_utils.training.fit import fit_autoencoder

WORKER = Path(__file__).with_name("train_worker.py")


def _images(n=8, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def _epoch_batches(ds, epoch):
    set_dataset_epoch(ds, epoch)
    return [x for x, _ in ds]


class _Pairs(keras.utils.PyDataset):
    """``(x, x)`` batches of a fixed array, whatever it holds (NaN included)."""

    def __init__(self, x, batch_size):
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = self.x[index * self.batch_size:(index + 1) * self.batch_size]
        return part, part.copy()


# --------------------------------------------------------------------------- datasets


def test_image_dataset_scales_and_shuffles_per_epoch():
    images = _images(7)
    ds = image_dataset(images, batch_size=3, shuffle=True, seed=1)
    first = _epoch_batches(ds, 0)
    assert [len(b) for b in first] == [3, 3, 1]
    stacked = np.concatenate(first)
    assert stacked.dtype == np.float32 and stacked.min() >= 0.0 and stacked.max() <= 1.0
    # every image exactly once per epoch
    expected = np.sort((images / 255.0).astype(np.float32).reshape(7, -1), axis=0)
    np.testing.assert_allclose(np.sort(stacked.reshape(7, -1), axis=0), expected, atol=1e-7)
    again = np.concatenate(_epoch_batches(ds, 0))
    other = np.concatenate(_epoch_batches(ds, 1))
    np.testing.assert_array_equal(stacked, again)
    assert not np.array_equal(stacked, other)
    x, y = next(iter(ds))
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, y)


def test_image_dataset_rejects_bad_arrays():
    with pytest.raises(DataError, match=r"within \[0, 1\]"):
        image_dataset(np.full((2, 8, 8, 1), 2.0, np.float32))
    with pytest.raises(DataError, match="shape"):
        image_dataset(np.zeros((2, 8, 8), np.uint8))
    ready = _Pairs(np.zeros((1, 8, 8, 1), np.float32), 1)
    assert image_dataset(ready) is ready
    with pytest.raises(ParameterError, match="numpy array"):
        image_dataset([[0.0]])
    with pytest.raises(ParameterError, match="batch_size"):
        image_dataset(np.zeros((2, 8, 8, 1), np.uint8), batch_size=0)


def _dihedral(patch):
    variants = []
    for k in range(4):
        rotated = np.rot90(patch, k, axes=(0, 1))
        variants += [rotated, rotated[:, ::-1], rotated[::-1], rotated[::-1, ::-1]]
    return variants


@pytest.mark.parametrize("augment", [False, True])
def test_patch_dataset_crops_are_from_the_images_and_keyed_on_seed_and_epoch(augment):
    images = _images(3, size=20, channels=1, seed=2)
    ds = patch_dataset(images, 8, patches_per_epoch=10, batch_size=4, seed=5, augment=augment)
    epoch0 = np.concatenate(_epoch_batches(ds, 0))
    assert epoch0.shape == (10, 8, 8, 1)
    crops = {(images[i, t:t + 8, s:s + 8] / 255.0).astype(np.float32).tobytes()
             for i in range(3) for t in range(13) for s in range(13)}
    for patch in epoch0:
        candidates = _dihedral(patch) if augment else [patch]
        assert any(np.ascontiguousarray(c).tobytes() in crops for c in candidates)
    np.testing.assert_array_equal(epoch0, np.concatenate(_epoch_batches(ds, 0)))
    assert not np.array_equal(epoch0, np.concatenate(_epoch_batches(ds, 1)))
    fresh = patch_dataset(images, 8, 10, batch_size=4, seed=5, augment=augment)
    np.testing.assert_array_equal(epoch0, np.concatenate(_epoch_batches(fresh, 0)))


def test_val_patch_dataset_is_fixed():
    images = _images(3, size=20, channels=1)
    ds = val_patch_dataset(images, 8, patches_per_image=2, batch_size=4)
    a = np.concatenate([x for x, _ in ds])
    b = np.concatenate([x for x, _ in ds])
    assert a.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(a, b)


def _all_datasets(images):
    """One training dataset of each kind (and corrupt mode), freshly made."""
    return {
        "image": image_dataset(images, batch_size=3, seed=4),
        "patch": patch_dataset(images, 8, 10, batch_size=4, seed=4),
        **{f"patch {mode}": patch_dataset(images, 8, 10, batch_size=4, seed=4, corrupt=0.5,
                                          corrupt_mode=mode)
           for mode in ("rectangle", "grid", "rectangle+shading")},
        "anomaly": anomaly_patch_dataset(images, 8, 8, batch_size=4, seed=4, augment=True),
        "anomaly joint": anomaly_patch_dataset(images, 8, 8, batch_size=4, seed=4, joint=True),
    }


def _flat(batches):
    """Every array of a list of batches, in order (dict targets by key)."""
    out = []
    for x, y in batches:
        out.append(np.asarray(x))
        out += [np.asarray(y[k]) for k in sorted(y)] if isinstance(y, dict) else [np.asarray(y)]
    return out


@pytest.mark.parametrize("kind", list(_all_datasets(_images(7, size=20))))
def test_a_batch_is_a_function_of_seed_epoch_and_index_alone(kind):
    images = _images(7, size=20)
    ds, fresh = _all_datasets(images)[kind], _all_datasets(images)[kind]
    # Uninterrupted: epochs 0 to 5 in turn. Resumed: a new dataset set to epoch 5 directly.
    for epoch in range(6):
        uninterrupted = _flat(_epoch_batches_raw(ds, epoch))
    resumed = _flat(_epoch_batches_raw(fresh, 5))
    assert len(uninterrupted) == len(resumed)
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    # Never one buffer twice in a batch (TensorFlow may reuse an input's buffer).
    first = _flat([fresh[0]])
    assert not any(np.shares_memory(a, b) for i, a in enumerate(first) for b in first[i + 1:])
    # Out of order and twice: the same batches; another epoch: other batches.
    backwards = [fresh.epoch_batch(5, i) for i in reversed(range(len(fresh)))][::-1]
    for a, b in zip(resumed, _flat(backwards), strict=True):
        np.testing.assert_array_equal(a, b)
    other = _flat(_epoch_batches_raw(fresh, 6))
    assert not np.array_equal(resumed[0], other[0])


def _epoch_batches_raw(ds, epoch):
    set_dataset_epoch(ds, epoch)
    return list(ds)


def test_batch_counts_and_index_errors():
    images = _images(5, size=12)
    assert [len(b[0]) for b in image_dataset(images, batch_size=2)] == [2, 2, 1]
    assert [len(b[0]) for b in patch_dataset(images, 8, 10, batch_size=4)] == [4, 4, 2]
    assert [len(b[0]) for b in anomaly_patch_dataset(images, 8, 10, batch_size=4)] == [4] * 3
    assert [len(b[0]) for b in val_patch_dataset(images, 8, 2, batch_size=4)] == [4, 4, 2]
    ds = patch_dataset(images, 8, 10, batch_size=4)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ParameterError, match="epoch"):
        set_dataset_epoch(ds, -1)
    with pytest.raises(ParameterError, match="corrupt"):
        patch_dataset(images, 8, 10, corrupt=1.5)
    with pytest.raises(ParameterError, match="patch_size"):
        patch_dataset(images, 13, 10)
    set_dataset_epoch(val_patch_dataset(images, 8), 3)  # not epoch-keyed: left alone


def test_float_images_pass_through_unscaled():
    images = _images(4, size=12)
    as_float = (images / 255.0).astype(np.float64)
    for a, b in zip(patch_dataset(images, 8, 8, batch_size=4, seed=1),
                    patch_dataset(as_float, 8, 8, batch_size=4, seed=1), strict=True):
        assert b[0].dtype == np.float32
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_rectangle_corruption_paints_one_rectangle_into_the_input_only():
    images = np.full((4, 48, 48, 1), 128, np.uint8)
    ds = patch_dataset(images, 32, 64, batch_size=64, seed=3, augment=False, corrupt=0.5)
    inputs, targets = ds[0]
    assert np.allclose(targets, 128 / 255)
    changed = np.abs(inputs - targets)[..., 0] > 0
    painted = changed.reshape(64, -1).any(axis=1)
    assert 16 < painted.sum() < 48                                # about half of 64
    for patch in changed[painted]:
        rows, cols = np.flatnonzero(patch.any(axis=1)), np.flatnonzero(patch.any(axis=0))
        assert 2 <= len(rows) < 8 and 2 <= len(cols) < 8          # sides 1/16 to 1/4 of 32
        assert rows[-1] - rows[0] + 1 == len(rows)                # one block


def test_a_fit_reads_every_batch_once_with_its_own_epoch(tmp_path):
    """Keras (and its prefetching) asks for each batch of an epoch after the EpochSetter set
    that epoch: every (epoch, batch) is made exactly once, none with another epoch."""
    images = _images(8)
    ds = patch_dataset(images, 16, 16, batch_size=4, seed=0)
    calls = []
    make = ds.epoch_batch

    def logged(epoch, index):
        calls.append((epoch, index))
        return make(epoch, index)

    ds.epoch_batch = logged
    fit_autoencoder(_small_ae1(), ds, None, tmp_path, epochs=4, learning_rate=1e-3, seed=0,
                    verbose=0)
    # Keras may look at the first batches to learn the shapes before the fit starts.
    trained = sorted(call for call in calls if call[0] > 0)
    assert trained == [(e, i) for e in (1, 2, 3) for i in range(4)]
    assert sorted(set(calls) - set(trained)) == [(0, i) for i in range(4)]


def test_tensorflow_gets_the_same_batches_without_autotuning():
    """On TensorFlow a PyDataset reaches fit as tf.data with autotuning off (its thread's
    teardown stalled epochs for seconds), with the dataset's own batches of each epoch."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"the feed is for the TensorFlow backend; this is {keras.backend.backend()}")
    from anomaly_utils.training.fit import _fed
    from anomaly_utils.training.tensorflow_feed import feed_for_tensorflow

    ds = patch_dataset(_images(6), 8, 10, batch_size=4, seed=3, corrupt=0.5)
    feed = _fed(ds)
    assert feed.options().autotune.enabled is False
    assert int(feed.cardinality()) == len(ds) == 3
    for epoch in (0, 2):
        set_dataset_epoch(ds, epoch)
        fed = [(np.asarray(x), np.asarray(y)) for x, y in feed]
        made = [ds.epoch_batch(epoch, i) for i in range(len(ds))]
        assert [x.shape[0] for x, _ in fed] == [4, 4, 2]
        for (x, y), (x_made, y_made) in zip(fed, made, strict=True):
            np.testing.assert_array_equal(x, x_made)
            np.testing.assert_array_equal(y, y_made)
    images = _images(2)
    assert _fed(None) is None and _fed(images) is images  # only PyDatasets are wrapped
    with pytest.raises(ValueError, match="length 0"):
        feed_for_tensorflow(_Pairs(np.zeros((0, 4, 4, 1), np.float32), 2))


def test_the_training_modules_import_no_tensorflow_under_jax():
    pytest.importorskip("jax")
    code = ("import sys; import anomaly_utils.training.fit, anomaly_utils.training.datasets, "
            "anomaly_utils.training.callbacks, anomaly_utils.training.head, "
            "anomaly_utils.data.loading as loading; "
            "from anomaly_utils.training.datasets import patch_dataset; import numpy as np; "
            "ds = patch_dataset(np.zeros((2, 20, 20, 1), np.uint8), 8, 4, 2, corrupt=0.5); "
            "ds[1]; print('tensorflow' in sys.modules)")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


# --------------------------------------------------------------------------- fitting


def _small_ae1(variant="ae"):
    return build_ae1(16, latent_dim=16, variant=variant, encoder_filters=(8, 16, 32),
                     decoder_filters=(16, 8))


def _fit_ae1(model_dir, seed=0, **kwargs):
    images = _images(8)
    options = {"epochs": 3, "learning_rate": 1e-3, "batch_size": 4, "verbose": 0, **kwargs}
    return fit_autoencoder(_small_ae1(), images[:6], images[6:], model_dir, seed=seed, **options)


def test_fit_writes_artifacts_and_returns_the_best_checkpoint(tmp_path):
    result = _fit_ae1(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "history.csv", "history.json", "model.keras"]
    rows = read_history_csv(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["val_loss"] == [r["val_loss"] for r in rows] == result["history"]["val_loss"]
    assert result["best_epoch"] == int(np.argmin(history["val_loss"]))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["builder"] == "build_ae1"
    assert config["training"]["learning_rate"] == 1e-3
    x = (_images(8)[6:] / 255.0).astype(np.float32)
    reloaded = load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(result["model"].predict(x, verbose=0),
                                  reloaded.predict(x, verbose=0))
    mse = float(np.mean((reloaded.predict(x, verbose=0) - x) ** 2))
    assert mse == pytest.approx(min(history["val_loss"]), rel=1e-4)


def test_two_seeded_runs_give_identical_losses(tmp_path):
    a = _fit_ae1(tmp_path / "a", seed=3, epochs=2)["history"]
    b = _fit_ae1(tmp_path / "b", seed=3, epochs=2)["history"]
    assert a["loss"] == b["loss"] and a["val_loss"] == b["val_loss"]


def test_early_stopping_when_val_loss_stops_improving(tmp_path):
    # With a learning rate this small the weights cannot change, so val_loss is constant.
    result = _fit_ae1(tmp_path, epochs=10, learning_rate=1e-30, early_stopping_patience=2)
    assert result["history"]["epoch"] == [0, 1, 2]
    assert result["best_epoch"] == 0


def test_nan_input_stops_with_lab_error(tmp_path):
    x = np.full((4, 16, 16, 3), np.nan, np.float32)
    data = _Pairs(x, 2)
    with pytest.raises(LabError, match=r"loss became NaN at epoch 0 batch 0.*learning_rate"):
        fit_autoencoder(_small_ae1(), data, data, tmp_path, epochs=2,
                        learning_rate=1e-3, seed=0, verbose=0)
    assert not (tmp_path / "backup").exists()


def test_huge_learning_rate_stops_with_lab_error(tmp_path):
    images = _images(8)
    with pytest.raises(LabError, match="became (NaN|infinite)"):
        fit_autoencoder(_small_ae1("vae"), images, images, tmp_path,
                        epochs=3, learning_rate=1e12, seed=0, batch_size=2, verbose=0)


def test_resume_refuses_other_settings(tmp_path):
    _fit_ae1(tmp_path, epochs=1)
    (tmp_path / "backup").mkdir()  # as if the run above had been killed
    with pytest.raises(ArtifactError, match="other settings"):
        _fit_ae1(tmp_path, epochs=1, learning_rate=1e-2)


# --------------------------------------------------------------------------- load_model


def test_load_model_refuses_missing_corrupt_and_lambda_files(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        load_model(tmp_path / "nope.keras")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(ArtifactError, match="corrupt.keras"):
        load_model(corrupt)
    inputs = keras.Input((4,))
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    path = tmp_path / "lambda.keras"
    unsafe.save(path)
    with pytest.raises(ArtifactError, match=r"lambda\.keras.*safe mode"):
        load_model(path)


# --------------------------------------------------------------------------- SIGKILL resume


# A JAX worker on one CPU thread, as tests/test_backends.py runs JAX.
WORKER_ENV = {"tensorflow": {}, "jax": {
    "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}}


def _start_worker(model_dir, *extra, backend="tensorflow"):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **WORKER_ENV[backend]}
    return subprocess.Popen([sys.executable, str(WORKER), str(model_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _result(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]), output


# On JAX in make test-backends: make test's time is spent (tests/test_backends.py trains the
# JAX chain and the VAE's resume there).
@pytest.mark.parametrize("backend", ["tensorflow",
                                     pytest.param("jax", marks=pytest.mark.backends)])
def test_sigkill_resumes_at_first_unfinished_epoch_and_matches_uninterrupted_run(tmp_path,
                                                                                 backend):
    epochs = "6"
    reference = _start_worker(tmp_path / "reference", "--epochs", epochs, backend=backend)
    victim_dir = tmp_path / "victim"
    victim = _start_worker(victim_dir, "--epochs", epochs, "--epoch-delay", "0.3",
                           backend=backend)
    metadata = victim_dir / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and victim.poll() is None:
        if metadata.is_file() and json.loads(metadata.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the worker ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    finished = json.loads(metadata.read_text())["epoch"]
    assert 2 <= finished < 6

    resumed, output = _result(_start_worker(victim_dir, "--epochs", epochs, backend=backend))
    assert resumed["initial_epoch"] == finished
    backend_of = json.loads((victim_dir / "config.json").read_text()).get("backend")
    assert backend_of == backend
    assert f"Resuming training at epoch {finished}" in output
    rows = read_history_csv(victim_dir / "history.csv")
    assert [r["epoch"] for r in rows] == list(range(6))
    assert not (victim_dir / "backup").exists()

    uninterrupted, _ = _result(reference)
    # Two processes that ran side by side: with oneDNN kernels (on by default on AVX-512
    # CPUs) the split of a reduction over threads follows the load, so the losses agree to
    # rounding, not to the bit. A resume that replayed the wrong epoch's shuffle or crops
    # moves them by percents.
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(resumed["history"][key], uninterrupted["history"][key],
                                   rtol=1e-5, err_msg=key)


# --------------------------------------------------------------------------- backup budget


def _backup_with_fake_clock(tmp_path, max_overhead, save_seconds):
    """A backup callback on a tiny model whose clock we move: each save takes save_seconds."""
    model = build_ae1(16, latent_dim=4, encoder_filters=(4, 4, 4), decoder_filters=(4, 4), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    now = [0.0]
    backup = EpochBackup(tmp_path / "backup", max_overhead=max_overhead)
    backup.set_model(model)
    backup.clock = lambda: now[0]
    write = backup.write

    def slow_write(finished_epochs):
        now[0] += save_seconds
        write(finished_epochs)

    backup.write = slow_write
    backup.on_train_begin()
    return backup, now


def test_backups_are_skipped_while_writing_them_would_exceed_the_time_budget(tmp_path):
    backup, now = _backup_with_fake_clock(tmp_path, max_overhead=0.1, save_seconds=1.0)
    for epoch in range(30):
        now[0] += 0.5  # an epoch of training
        backup.on_epoch_end(epoch)
    # After the first epoch, a 1 s backup is due again after 9 s of training (18 epochs).
    assert backup.saved_epochs == [1, 19]
    metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 19
    assert sorted(p.name for p in (tmp_path / "backup").glob("*.h5")) == ["epoch-00019.weights.h5"]


def test_backup_overhead_one_backs_up_every_epoch(tmp_path):
    backup, now = _backup_with_fake_clock(tmp_path, max_overhead=1.0, save_seconds=5.0)
    for epoch in range(4):
        now[0] += 0.1
        backup.on_epoch_end(epoch)
    assert backup.saved_epochs == [1, 2, 3, 4]


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_backup_overhead_out_of_range_is_refused(tmp_path, bad):
    with pytest.raises(ParameterError, match="max_overhead"):
        EpochBackup(tmp_path, max_overhead=bad)


def test_grid_corruption_zeroes_whole_cells_of_the_input_only():
    images = (_images(4, size=48, channels=3, seed=3) // 2 + 100).astype(np.uint8)  # no zeros
    ds = patch_dataset(images, 32, patches_per_epoch=64, batch_size=64, seed=1,
                       augment=False, corrupt=1.0, corrupt_mode="grid")
    set_dataset_epoch(ds, 0)
    inputs, targets = next(iter(ds))
    assert (targets > 0).all()                                   # targets stay clean
    hidden = inputs == 0
    np.testing.assert_array_equal(hidden[..., 0], hidden[..., 2])  # all channels of a pixel
    np.testing.assert_array_equal(inputs[~hidden], targets[~hidden])
    assert 0.2 < hidden.mean() < 0.45                            # about one cell in three
    sizes = set()
    for patch in hidden[..., 0]:                                 # whole cells of 2, 4 or 8 px
        whole = [c for c in (8, 4, 2) if all(patch[t:t + c, s:s + c].min()
                                              == patch[t:t + c, s:s + c].max()
                                              for t in range(0, 32, c) for s in range(0, 32, c))]
        assert whole
        sizes.add(whole[0])
    assert sizes == {2, 4, 8}                                    # every cell size is drawn
    untouched = patch_dataset(images, 32, 64, 64, seed=1, augment=False, corrupt=0.0,
                              corrupt_mode="grid")
    set_dataset_epoch(untouched, 0)
    x, y = next(iter(untouched))
    np.testing.assert_array_equal(x, y)
    with pytest.raises(ParameterError, match="corrupt_mode"):
        patch_dataset(images, 16, 8, corrupt=0.5, corrupt_mode="stripes")


def test_shading_corruption_adds_soft_bands_or_the_same_rectangles_to_the_input_only():
    images = np.full((4, 48, 48, 1), 128, np.uint8)               # flat: changes are visible

    def first_batch(mode):
        ds = patch_dataset(images, 32, patches_per_epoch=64, batch_size=64, seed=2,
                           augment=False, corrupt=1.0, corrupt_mode=mode)
        set_dataset_epoch(ds, 0)
        return next(iter(ds))

    inputs, targets = first_batch("rectangle+shading")
    rectangles, _ = first_batch("rectangle")
    assert np.allclose(targets, 128 / 255)                         # targets stay clean
    bands = whole = 0
    for x, rectangle in zip(inputs, rectangles, strict=True):
        if np.array_equal(x, rectangle):                          # the rectangle mode's own
            continue
        bands += 1
        change = (x - targets[0])[..., 0]
        changed = np.abs(change) > 1e-3
        assert changed.any()
        assert (change[changed] > 0).all() or (change[changed] < 0).all()  # one direction
        assert np.abs(change).max() <= 0.30 + 1e-3                 # at most 30 % of the range
        # A band may run off the patch's edge (about 2 % do far enough to show only part
        # of their rise); the others show a core of 5-30 % and soft edges.
        edge = np.abs(change[changed]) < 0.5 * np.abs(change).max()
        whole += bool(changed.mean() > 0.03 and np.abs(change).max() >= 0.05 - 1e-3
                      and edge.any() and not edge.all())
    assert 16 < bands < 48                                         # about half of 64
    assert whole >= 0.85 * bands


def test_val_patch_dataset_grid_masks_the_inputs_the_same_way_every_time():
    images = (_images(3, size=32, channels=1) // 2 + 100).astype(np.uint8)
    ds = val_patch_dataset(images, 16, patches_per_image=4, batch_size=5, corrupt_mode="grid")
    first = list(ds)
    second = list(ds)
    for (x1, y1), (x2, _) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        assert (y1 > 0).all() and (x1 == 0).any()
    with pytest.raises(ParameterError, match="corrupt_mode"):
        val_patch_dataset(images, 16, corrupt_mode="rectangle")
    plain = val_patch_dataset(images, 16, patches_per_image=4, batch_size=5)
    np.testing.assert_array_equal(np.concatenate([y for _, y in first]),
                                  np.concatenate([x for x, _ in plain]))
