"""The Scorer: one way to turn images into image scores, anomaly maps and reconstructions
for the notebooks, the gallery and the ``score`` command.

A trained model lives in ``run_dir/<model>/`` (``model.keras``, ``config.json`` from
training, ``scoring.json`` with how it is scored); the further members of an ensemble in
``run_dir/<model>/member<k>/`` (:func:`member_dir`). :class:`Scorer` turns uint8 images into
image scores, anomaly maps and reconstructions the same way for every caller, so the
notebooks, the gallery and the CLI can never disagree.

Example:
    >>> scorer = Scorer.load("runs/my-run", "ae2")                     # doctest: +SKIP
    >>> result = scorer.score(images)                                    # doctest: +SKIP
    >>> result.scores.shape, result.maps.shape                           # doctest: +SKIP
    ((105,), (105, 128, 128))
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anomaly_utils.artifacts import read_json, write_json
from anomaly_utils.errors import ArtifactError, ParameterError
from anomaly_utils.models.segmentation_head import head_of, reconstructor_of
from anomaly_utils.models.storage import load_model
from anomaly_utils.scoring.head_maps import SCORE_WINDOW, head_maps, peak_of_mean_filtered
from anomaly_utils.scoring.map_kinds import HEADS
from anomaly_utils.scoring.maps import anomaly_map, image_scores, resize_maps
from anomaly_utils.scoring.reconstruction import (
    inpaint_reconstruct,
    reconstruct,
    sliding_window_reconstruct,
)
from anomaly_utils.scoring.stored import MODELS, ScoreResult
from anomaly_utils.training.masks import GRID_SETS

HEAD_DIR = "head"  # ae2/head/, ae2/member<k>/head/: a head's training run (AE-2 + head)


@dataclass
class ScoringConfig:
    """How a model's reconstructions become anomaly maps and image scores.

    Attributes:
        model: "ae1" or "ae2".
        image_size: side length the model sees, pixels (AE-2: the full image it slides over).
        color_mode: "rgb" or "grayscale".
        map_kind: per-pixel error: "l2" (squared error), "l1", "ssim" (1 - SSIM), "gms"
            (gradients), "lowpass" (low-pass colour error) or blends such as "ssim+l1"
            (equal weights) or "0.5*ssim+0.5*gms+1*lowpass" (see
            :func:`anomaly_utils.scoring.maps.anomaly_map`).
        score_method: "mean", "max" or "topk" (mean of the top ``topk_percent`` % pixels).
        eval_size: side length of the stored maps, pixels (both models use the same, so
            pixel metrics compare like with like).
        smooth_sigma: Gaussian smoothing of the map at model resolution, pixels (0 = off).
        patch_size, stride: AE-2's sliding window, pixels (0 = whole image in one pass).
        vae_samples: decoder samples averaged per image for a VAE (0 = posterior mean).
        inpaint_cells: grid cell sides, pixels, for an inpainting model (AE-2 with
            ``bottleneck="unet"``): each cell size reconstructs every pixel from an input in
            which it was hidden (:func:`anomaly_utils.scoring.reconstruction.inpaint_reconstruct`, whole
            images, ``patch_size`` unused) and the maps of the cell sizes are averaged.
            Empty: plain reconstruction.
        inpaint_sets: disjoint masks per cell size (forward passes per cell size).
        normalize: subtract the per-pixel mean error of defect-free training images and
            divide by its spread (a per-position model of normal error), before scoring.
            Fitted on training images, not on the validation normals that thresholds and
            model choices are judged with (see :meth:`Scorer.fit_normalization`).
        pad: pixels of mirrored border added to each image before it is reconstructed and
            mapped, and cropped off afterwards, so that border pixels are reconstructed,
            compared (SSIM, GMS) and smoothed with context on every side, as inner pixels
            are (0 = off; needs sliding-window scoring: ``patch_size`` > 0, no inpainting).
        ensemble_size: models whose reconstructions are averaged (1: a single model).
            Member k was trained with seed ``seed + k`` on the same split
            (:func:`member_seed`).
        head: "none" (the map is the reconstruction error above) or "segmentation" (AE-2's
            learned map: the segmentation head's anomaly probability on image and
            reconstruction, :mod:`anomaly_utils.scoring.head_maps`; the error map is kept
            beside it for the gallery). In an ensemble each member has its own head, trained
            on its own reconstructions, and the map is the mean of the heads' maps.
        head_score_window: with a head, the image score is the peak of the map after a
            mean filter of this fraction of the image side.
    """

    model: str
    image_size: int
    color_mode: str = "rgb"
    map_kind: str = "l2"
    score_method: str = "mean"
    topk_percent: float = 1.0
    eval_size: int = 128
    smooth_sigma: float = 0.0
    patch_size: int = 0
    stride: int = 0
    vae_samples: int = 0
    inpaint_cells: list = field(default_factory=list)
    inpaint_sets: int = GRID_SETS
    seed: int = 0
    normalize: bool = False
    batch_size: int = 32
    ensemble_size: int = 1
    pad: int = 0
    head: str = "none"
    head_score_window: float = SCORE_WINDOW
    norm_mean: list | None = field(default=None, repr=False)
    norm_std: list | None = field(default=None, repr=False)


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member`` (weights, crops, augmentation); member 0 keeps
    ``seed``, so an ensemble of one is the single model. The data split always uses ``seed``."""
    return seed + member


def member_dir(model_dir: str | os.PathLike, member: int) -> Path:
    """Folder of ensemble member ``member``: ``model_dir`` itself for member 0, else
    ``model_dir/member<k>``."""
    return Path(model_dir) if member == 0 else Path(model_dir) / f"member{member}"


def load_members(model_dir: str | os.PathLike, ensemble_size: int) -> list:
    """The ``ensemble_size`` models of an ensemble in ``model_dir`` (:func:`member_dir`),
    loaded in safe mode.

    Raises:
        ArtifactError: naming every member file that is missing.
    """

    paths = [member_dir(model_dir, k) / "model.keras" for k in range(ensemble_size)]
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise ArtifactError(
            f"the ensemble of {ensemble_size} in '{model_dir}' lacks {', '.join(missing)}",
            fix="rerun the notebook that trains it (e.g. run --resume)")
    return [load_model(p) for p in paths]


class Scorer:
    """A trained model (or an ensemble of them) together with its :class:`ScoringConfig`.

    ``model`` is one Keras model or a list of ``config.ensemble_size`` models. An ensemble
    reconstructs with the mean of its members' reconstructions and maps the error of that;
    on magnetic_tile's three validation sets this led the mean of the members' maps by
    0.0016 (docs/experiments.md, ensembles).
    """

    def __init__(self, model, config: ScoringConfig, head=None):
        self.members = list(model) if isinstance(model, (list, tuple)) else [model]
        self.heads = [] if head is None else list(head) if isinstance(head, (list, tuple)) \
            else [head]
        if len(self.members) != config.ensemble_size:
            raise ParameterError(
                f"{len(self.members)} model(s) given but the scoring config says "
                f"ensemble_size={config.ensemble_size}",
                fix="pass one model per ensemble member")
        if config.head not in HEADS:
            raise ParameterError(f"head must be one of {HEADS}, got {config.head!r}",
                                 fix="pass -p head segmentation or none")
        if (config.head != "none") != bool(self.heads):
            raise ParameterError(f"the scoring config says head={config.head!r} but "
                                 f"{'a' if self.heads else 'no'} head model was given",
                                 fix="pass the trained head with head=..., or set head none")
        if self.heads and len(self.heads) != len(self.members):
            raise ParameterError(f"{len(self.heads)} head(s) given for {len(self.members)} "
                                 f"ensemble member(s)", fix="pass one head per member")
        if self.heads and config.inpaint_cells:
            raise ParameterError("the segmentation head works on a plain AE-2, not on the "
                                 "inpainting U-Net",
                                 fix="set bottleneck global or spatial, or head none")
        self.config = config

    @property
    def model(self):
        """The first (for a single model: the only) member."""
        return self.members[0]

    @classmethod
    def load(cls, run_dir: str | os.PathLike, name: str) -> Scorer:
        """Load ``run_dir/<name>/model.keras`` (safe mode), the further ensemble members'
        ``member<k>/model.keras`` and ``scoring.json``."""
        if name not in MODELS:
            raise ParameterError(f"model must be one of {MODELS}, got {name!r}")
        folder = Path(run_dir) / name
        config = ScoringConfig(**read_json(folder / "scoring.json"))
        if config.head == "none":
            return cls(load_members(folder, config.ensemble_size), config)
        # Each head's run holds the AE-2 it was trained with (joint training changes it).
        trainers = [load_model(member_dir(folder, k) / HEAD_DIR / "model.keras")
                    for k in range(config.ensemble_size)]
        return cls([reconstructor_of(t) for t in trainers], config,
                   head=[head_of(t) for t in trainers])

    def save_config(self, run_dir: str | os.PathLike) -> None:
        write_json(Path(run_dir) / self.config.model / "scoring.json", asdict(self.config))

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Reconstruct uint8 or float images (N, S, S, C); returns float32 in [0, 1] (an
        ensemble's: the mean of its members' reconstructions)."""
        return self._unpad(_mean_of(self._member_reconstructions(self._pad(images))))

    def reconstruct_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions (N, S, S, C) and per-pixel error maps (N, S, S) at model resolution.

        For a VAE with ``vae_samples`` the decoder is sampled once: the reconstruction is the
        samples' mean and the map the mean of the samples' maps (not the map of the mean,
        which would hide the samples' spread). An ensemble's map is the map of its members'
        mean reconstruction (see the class docstring). With ``pad``, both are computed on the
        reflect-padded images and cropped back.
        """
        recons, maps, _ = self._reconstruct_members_with_maps(images)
        return recons, maps

    def _reconstruct_members_with_maps(self, images: np.ndarray,
                                       ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """:meth:`reconstruct_with_maps`, and each member's own reconstruction (N, S, S, C)
        (for one member: the reconstruction itself), all cropped back."""
        padded = self._pad(images)
        if len(self.members) == 1:
            recons, maps = self._reconstruct_with_maps(self.model, padded)
            recons = self._unpad(recons)
            return recons, self._unpad(maps), [recons]
        c = self.config
        each = self._member_reconstructions(padded)
        recons = _mean_of(each)
        maps = anomaly_map(_as_float(padded), recons, kind=c.map_kind,
                                   smooth_sigma=c.smooth_sigma)
        return self._unpad(recons), self._unpad(maps), [self._unpad(r) for r in each]

    def _pad(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, C) -> (N, S + 2 pad, S + 2 pad, C), mirrored at the border."""
        p = self.config.pad
        if not p:
            return images
        if not self.config.patch_size or self.config.inpaint_cells:
            raise ParameterError(
                f"pad={p} needs sliding-window scoring (patch_size > 0, no inpainting), but "
                f"this {self.config.model} model reconstructs whole images",
                fix="set pad to 0")
        if p >= images.shape[1]:
            raise ParameterError(f"pad={p} must be smaller than the image side "
                                 f"({images.shape[1]} px)", fix="use a smaller pad")
        return np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")

    def _unpad(self, arrays: np.ndarray) -> np.ndarray:
        """Crop what :meth:`_pad` added from (N, H, W[, C]) arrays."""
        p = self.config.pad
        return arrays[:, p:-p, p:-p] if p else arrays

    def _member_reconstructions(self, images: np.ndarray) -> list[np.ndarray]:
        """Each member's reconstruction (N, S, S, C) of ``images`` as given (padded or not)."""
        return [self._reconstruct(model, images) for model in self.members]

    def _reconstruct(self, model, images: np.ndarray) -> np.ndarray:
        c = self.config
        x = _as_float(images)
        if c.inpaint_cells:
            return np.mean(self._inpainted(model, x), axis=0)
        if c.patch_size and c.patch_size < x.shape[1]:
            return sliding_window_reconstruct(model, x, c.patch_size, c.stride,
                                                      batch_size=c.batch_size)
        if c.vae_samples and hasattr(model, "sample_reconstructions"):
            samples = model.sample_reconstructions(x, c.vae_samples, c.seed)
            return np.asarray(samples, np.float32).mean(axis=0)
        return reconstruct(model, x, batch_size=c.batch_size)

    def _reconstruct_with_maps(self, model, images: np.ndarray,
                               ) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        x = _as_float(images)
        if c.inpaint_cells:
            recons = self._inpainted(model, x)
            maps = np.mean([anomaly_map(x, r, kind=c.map_kind,
                                                smooth_sigma=c.smooth_sigma) for r in recons],
                           axis=0)
            return np.mean(recons, axis=0), maps.astype(np.float32)
        sliding = bool(c.patch_size) and c.patch_size < x.shape[1]
        if c.vae_samples and hasattr(model, "sample_reconstructions") and not sliding:
            samples = np.asarray(model.sample_reconstructions(x, c.vae_samples, c.seed),
                                 np.float32)
            maps = np.mean([anomaly_map(x, s, kind=c.map_kind,
                                                smooth_sigma=c.smooth_sigma) for s in samples],
                           axis=0)
            return samples.mean(axis=0), maps.astype(np.float32)
        recons = self._reconstruct(model, images)
        return recons, anomaly_map(x, recons, kind=c.map_kind,
                                           smooth_sigma=c.smooth_sigma)

    def _inpainted(self, model, x: np.ndarray) -> list[np.ndarray]:
        """One inpainted reconstruction (N, S, S, C) per cell size of ``inpaint_cells``."""
        c = self.config
        return [inpaint_reconstruct(model, x, int(cell), c.inpaint_sets, c.seed,
                                            c.batch_size) for cell in c.inpaint_cells]

    def fit_normalization(self, normal_images: np.ndarray) -> None:
        """Learn the per-pixel mean and spread of the error on defect-free images (N, S, S, C).

        Pass training images (e.g. :func:`training_sample`), not the validation normals:
        normals scored with statistics fitted on themselves look more normal than unseen
        ones, which makes validation AUROC optimistic and percentile thresholds too low.
        """
        _, maps = self.reconstruct_with_maps(normal_images)
        mean, spread = normal_error_stats(maps)
        self.config.norm_mean = mean.tolist()
        self.config.norm_std = spread.tolist()

    def _head_maps(self, images: np.ndarray, member_recons: list[np.ndarray]) -> np.ndarray:
        """(N, S, S) float32: the head's map, or the mean of the members' heads' maps, each
        on its own member's reconstruction (``member_recons``, one (N, S, S, C) each)."""
        x = _as_float(images)
        maps = [head_maps(head, x, recons, self.config.batch_size)
                for head, recons in zip(self.heads, member_recons, strict=True)]
        return maps[0] if len(maps) == 1 else np.mean(maps, axis=0, dtype=np.float32)

    def score(self, images: np.ndarray) -> ScoreResult:
        """Image scores, maps at ``eval_size`` and reconstructions of ``images``."""
        c = self.config
        if images.shape[1] != c.image_size or images.shape[-1] != (3 if c.color_mode == "rgb"
                                                                  else 1):
            raise ParameterError(
                f"images are {images.shape[1:]} but the {c.model} model expects "
                f"({c.image_size}, {c.image_size}, {3 if c.color_mode == 'rgb' else 1})",
                fix="load the images with the model's image_size and color_mode")
        recons, maps, member_recons = self._reconstruct_members_with_maps(images)
        if c.normalize and c.norm_mean is not None:
            maps = (maps - np.asarray(c.norm_mean, np.float32)) / np.asarray(c.norm_std,
                                                                            np.float32)
        if self.heads:
            error_maps = resize_maps(maps, c.eval_size)
            maps = self._head_maps(images, member_recons)
            scores = peak_of_mean_filtered(maps, c.head_score_window)
            return ScoreResult(scores, resize_maps(maps, c.eval_size), recons, error_maps)
        if c.model == "ae1" and c.score_method == "mean" and not c.normalize:
            scores = maps.reshape(len(maps), -1).mean(axis=1)  # the study's MSE score
        else:
            scores = image_scores(maps, method=c.score_method,
                                          topk_percent=c.topk_percent)
        maps = resize_maps(maps, c.eval_size)
        return ScoreResult(np.asarray(scores, np.float32), maps.astype(np.float32), recons)


def normal_error_stats(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and spread, each (H, W), of defect-free images' error maps (N, H, W).

    The spread is the per-pixel standard deviation plus 0.1 % of the overall one, so that
    positions where the error never varies do not divide by ~0.
    """
    return maps.mean(axis=0), maps.std(axis=0) + 1e-3 * maps.std() + 1e-6


def training_sample(train_images: np.ndarray, n: int = 200, seed: int = 0) -> np.ndarray:
    """Up to ``n`` training images (N, S, S, C) drawn without replacement, seeded."""
    if len(train_images) <= n:
        return train_images
    rng = np.random.default_rng(seed)
    return train_images[np.sort(rng.choice(len(train_images), n, replace=False))]


def _as_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def _mean_of(recons: list[np.ndarray]) -> np.ndarray:
    """The members' mean reconstruction, float32 (one member's: its own, unchanged)."""
    return recons[0] if len(recons) == 1 else np.mean(recons, axis=0, dtype=np.float32)
