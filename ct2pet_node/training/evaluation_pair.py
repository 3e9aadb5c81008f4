"""The slices an evaluation compares: CT, real PET and body mask, paired at the model's size.

From a built dataset (:func:`load_dataset_pair`) or from a CT and a PET
series folder paired on the fly (:func:`load_evaluation_pair`); either way
checked against the model first (SUV output, the field of view it was
trained at), so that a report never compares what the model was not made for.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ct2pet_node.engine.manifest import WeightsManifest
from ct2pet_node.engine.weights import load_manifest
from ct2pet_node.errors import InputError, WeightsError
from ct2pet_node.training.summary import summarise
from ct2pet_node.training.train import read_dataset


@dataclass(frozen=True, slots=True, eq=False)
class EvaluationPair:
    """Paired evaluation slices at the model's size, arrays (N, S, S) in position order.

    Attributes
    ----------
    hu, suv : numpy.ndarray
        float32 CT in HU and real PET in SUVbw.
    body : numpy.ndarray
        bool body mask (SUV errors are taken inside it).
    data_range : float
        R of PSNR and SSIM, SUVbw: the model's PET scale.
    first_index : int
        Slice index of ``hu[0]`` within its study.
    study : str
        CT series UID ("" when unknown).
    z_over_x : float
        Slice spacing / pixel spacing, for the coronal MIP's proportions.
    """

    hu: np.ndarray
    suv: np.ndarray
    body: np.ndarray
    data_range: float
    first_index: int = 0
    study: str = ""
    z_over_x: float = 1.0

    def __post_init__(self) -> None:
        paired = self.hu.shape == self.suv.shape == self.body.shape and self.hu.ndim == 3
        if not (paired and self.hu.shape[0] and self.data_range > 0 and self.first_index >= 0):
            raise InputError(
                f"evaluation slices hu {self.hu.shape}, suv {self.suv.shape}, body {self.body.shape}, "
                f"data range {self.data_range} SUV, first slice {self.first_index}: need paired non-empty "
                "(N, S, S) arrays at the model size, a positive range and a slice index >= 0"
            )

    @property
    def indices(self) -> list[int]:
        """Slice index of every row within its study."""
        return list(range(self.first_index, self.first_index + self.hu.shape[0]))

    def summarise(self, synthetic: np.ndarray) -> dict[str, Any]:
        """:func:`~ct2pet_node.training.summary.summarise` of synthetic PET (N, S, S) SUVbw against this pair."""
        return summarise(synthetic, self.suv, self.body, self.data_range, self.indices)


def parse_slices(text: str | None, count: int) -> tuple[int, int]:
    """``"A:B"`` (half-open, either side may be empty) -> (first, stop) within ``count`` slices."""
    if not text:
        return 0, count
    try:
        a, b = text.split(":")
        first = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else count
    except ValueError as exc:
        raise InputError(f"--slices {text!r} must look like A:B (slice indices, B excluded)") from exc
    if not 0 <= first < stop <= count:
        raise InputError(f"--slices {text!r} is outside 0:{count}; pick A < B within the study")
    return first, stop


def suv_range(manifest: WeightsManifest, origin: object) -> float:
    """The PET scale (SUVbw) of SUV-output weights: the data range of PSNR and SSIM."""
    if manifest.output_units != "SUVbw":
        raise WeightsError(
            f"weights {origin} output {manifest.output_units!r}, not SUVbw; "
            "evaluate compares SUV, so use weights trained by ct2pet-node train"
        )
    return float(manifest.pet_scaling.scale)


def _refuse_another_field_of_view(manifest: WeightsManifest, data_dir: Path) -> None:
    """A model sees anatomy at the pixel size it was trained at: evaluate it at that one."""
    from ct2pet_node.training.dataset import load_dataset

    dataset, frame = load_dataset(data_dir), manifest.frame
    if not math.isclose(dataset.field_of_view_mm, frame.field_of_view_mm, rel_tol=1e-6):
        raise InputError(
            f"dataset {data_dir} covers {dataset.field_of_view_mm:g} mm in plane but model "
            f"{manifest.model_id} was trained at {frame.field_of_view_mm:g} mm"
            f"{' (assumed)' if frame.assumed else ''}; build the evaluation dataset with "
            f"--field-of-view-mm {frame.field_of_view_mm:g}"
        )


def load_dataset_pair(
    weights_dir: Path | str, data_dir: Path | str, slices: str | None, *, study: str | None = None
) -> EvaluationPair:
    """Slices A:B of one study of a built dataset (``study``: a CT series UID; default the first).

    Raises
    ------
    InputError
        The dataset's field of view is not the one the model was trained at.
    """
    manifest = load_manifest(Path(weights_dir))
    data_range = suv_range(manifest, weights_dir)
    _refuse_another_field_of_view(manifest, Path(data_dir))
    studies = read_dataset(Path(data_dir))
    uid = study or next(iter(studies))
    if uid not in studies:
        raise InputError(f"study {uid!r} is not in dataset {data_dir} (it has {sorted(studies)})")
    data = studies[uid]
    first, stop = parse_slices(slices, data.hu.shape[0])
    rows = slice(first, stop)
    return EvaluationPair(
        data.hu[rows], data.suv[rows], data.body[rows], data_range, first, uid, data.z_over_x
    )


def load_evaluation_pair(
    weights_dir: Path | str, ct_dir: Path | str, pet_dir: Path | str, slices: str | None
) -> EvaluationPair:
    """Slices A:B (position order) of a CT series folder and its PET series folder, at the model's size.

    The dataset builder pairs the series (resampled, PET in SUVbw, body mask)
    into a temporary folder, as ``ct2pet-node evaluate`` does, at the model's
    training geometry (its manifest's ``geometry``; the release's assumed
    500 mm when unstated): the grid the node would show the CT to the model on.
    """
    from ct2pet_node.training.dataset import build_dataset

    frame = load_manifest(Path(weights_dir)).frame
    with tempfile.TemporaryDirectory(prefix="ct2pet-eval-") as tmp:
        build_dataset(
            Path(ct_dir),
            Path(pet_dir),
            Path(tmp) / "dataset",
            size=frame.matrix,
            field_of_view_mm=frame.field_of_view_mm,
        )
        return load_dataset_pair(weights_dir, Path(tmp) / "dataset", slices)
