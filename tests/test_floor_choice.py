"""The floor's window scale: chosen on validation by the size of the anomalies there.

Notebook 01 fits the floor with its windows up to a quarter of the image side and, for the
variant and gradient that wins, again up to half the side; the validation set decides. Faint
anomalies as wide as a third of the image need the wider windows, specks of a few pixels the
narrower ones. The eigen-image stage after it is tested in tests/test_eigen_residual.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomaly_utils.errors import ParameterError
from anomaly_utils.evaluation.selection import selection_score
from anomaly_utils.pipeline.parameters import RULES
from anomaly_utils.scoring import statistics_floor
from anomaly_utils.scoring.floor_choice import fit_floor, floor_name
from anomaly_utils.scoring.statistics_floor import (
    WINDOW_SCALES,
    default_windows,
    floor_windows_problem,
    window_scales,
)

SIZE = 64
NARROW = "positional, magnitude"
WIDE = "positional, magnitude, windows to 0.5"


def textures(n: int, seed: int) -> np.ndarray:
    """(n, SIZE, SIZE, 1) float32: a fine random texture around mid-grey."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n, SIZE, SIZE)), (0, 1, 1))
    return (0.5 + 0.2 * noise)[..., None].clip(0, 1).astype(np.float32)


def with_anomalies(radius: int, depth: float, seed: int = 3, n: int = 12):
    """Validation images: ``n`` clean normals, then ``n`` with a darker disc of ``radius``
    pixels, ``depth`` below the texture; labels and (2n, SIZE, SIZE) masks."""
    rng = np.random.default_rng(seed)
    anomalous = textures(n, 2)
    masks = np.zeros((2 * n, SIZE, SIZE), bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        cy, cx = rng.uniform(radius + 2, SIZE - radius - 2, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        anomalous[i, disc, 0] -= depth
        masks[n + i] = disc
    images = np.concatenate([textures(n, 1), anomalous.clip(0, 1)])
    return images, np.repeat([0, 1], n), masks


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return textures(32, 0)


def chosen_scale(train, radius: int, depth: float):
    choice = fit_floor(train, *with_anomalies(radius, depth), variant="positional",
                       gradient="magnitude", form="gaussian", eigen="none",
                       normalize="standard", eval_size=SIZE)
    assert list(choice.validation) == [NARROW, WIDE]  # the wider scale for the first's winner
    scores = {row: selection_score(v) for row, v in choice.validation.items()}
    assert choice.name == max(scores, key=scores.get)
    assert [c["model"] for c in choice.choices] == [NARROW, choice.name]
    return choice


def test_faint_wide_anomalies_choose_the_wider_windows(train):
    choice = chosen_scale(train, radius=14, depth=0.025)
    assert choice.name == WIDE
    assert choice.floor.used_windows == default_windows(SIZE, 0.5) == (7, 15, 31)


def test_small_specks_keep_the_narrower_windows(train):
    choice = chosen_scale(train, radius=2, depth=0.25)
    assert choice.name == NARROW
    assert choice.floor.used_windows == default_windows(SIZE) == (3, 7, 15)


def test_a_window_scale_asked_for_is_the_only_one_tried(train):
    images, labels, masks = with_anomalies(14, 0.025)
    choice = fit_floor(train, images, labels, masks, variant="positional", gradient="auto",
                       windows="0.5", form="gaussian", eigen="none",
                       normalize="standard", eval_size=SIZE)  # -p passes text
    assert list(choice.validation) == [f"positional, {g}, windows to 0.5"
                                       for g in ("magnitude", "directional")]
    assert choice.floor.used_windows == (7, 15, 31)
    with pytest.raises(ParameterError, match="floor_windows"):
        fit_floor(train, images, labels, masks, windows=2, normalize="standard", eval_size=SIZE)


def test_window_scales_and_their_names():
    assert window_scales("auto") == WINDOW_SCALES == (0.25, 0.5)
    assert window_scales(0.5) == window_scales("0.5") == (0.5,)
    assert window_scales(1) == (1.0,)
    assert default_windows(256, 0.5) == (31, 63, 127)
    assert default_windows(256, 1) == (63, 127, 255)
    assert floor_name("global", "directional", 0.25) == "global, directional"
    assert floor_name("global", "directional", 0.5) == "global, directional, windows to 0.5"
    for bad in (0, -0.5, 1.5, "wide", "", None, True, [0.5]):
        with pytest.raises(ParameterError, match="floor_windows"):
            window_scales(bad)
        assert floor_windows_problem(bad) and "(0, 1]" in floor_windows_problem(bad)
    assert floor_windows_problem("auto") is None and floor_windows_problem(0.25) is None
    assert RULES["01_data_exploration"]["floor_windows"] is floor_windows_problem


def test_features_ahead_in_a_thread_choose_and_fit_what_one_thread_does(train, monkeypatch):
    """With two CPUs every floor computes its next batch's features in a thread; every row,
    the choice and the chosen floor's arrays must be those of one thread, to the last bit."""
    images, labels, masks = with_anomalies(6, 0.1)
    pools = []  # one per fit or scoring of several batches

    class CountedPool(statistics_floor.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(statistics_floor, "ThreadPoolExecutor", CountedPool)
    monkeypatch.setattr(statistics_floor, "_BATCH_PIXELS", 5 * SIZE * SIZE)  # 5 images a batch
    fits = {}
    for cpus in (1, 2):
        monkeypatch.setattr(statistics_floor, "cpu_share", lambda cpus=cpus: cpus)
        fits[cpus] = fit_floor(train, images, labels, masks, form="gaussian", eigen="none",
                               normalize="standard", windows=0.25, eval_size=SIZE)
        assert pools == ([] if cpus == 1 else [1] * 8)  # the four fits, then their scoring
    one, two = fits[1], fits[2]
    assert list(one.validation) == list(two.validation) and len(one.validation) == 4
    assert one.validation == two.validation and one.name == two.name
    assert np.array_equal(one.floor.mean, two.floor.mean)
    assert np.array_equal(one.floor.covariance, two.floor.covariance)
    assert np.array_equal(one.floor.score(images).maps, two.floor.score(images).maps)
