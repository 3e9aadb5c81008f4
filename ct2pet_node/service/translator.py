"""What the service needs of a translation engine, and nothing of torch or Ray.

The local :class:`~ct2pet_node.engine.pipeline.Pipeline` and the cluster's
:class:`~ct2pet_node.cluster.translator.RayTranslator` both satisfy it; the
composition root picks one, and the worker and the folder conversion take
whichever they are given.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Protocol, Unpack, runtime_checkable

import numpy as np

from ct2pet_node.domain.model_grid import ModelFrame
from ct2pet_node.domain.request import TranslationRequest


class Translator(Protocol):
    """What the worker and the folder conversion use of an engine: a model on its grid, one call."""

    model_id: str
    image_size: int
    output_units: str
    default_steps: int
    default_eta: float
    frame: ModelFrame

    def translate_region(self, region_hu: np.ndarray, **request: Unpack[TranslationRequest]) -> np.ndarray:
        """(N, H, W) CT regions in HU (:meth:`GridMapping.to_region`) -> (N, S, S) on the model grid."""
        ...


@runtime_checkable
class SpreadsChunks(Protocol):
    """A translator that takes a volume's chunks all at once and spreads them (the cluster's)."""

    def translate_chunks(
        self,
        region_hu: np.ndarray,
        chunks: Sequence[range],
        *,
        kvp: float | None,
        steps: int | None,
        eta: float | None,
        seed: int | None,
        first_slice_index: int = 0,
    ) -> Generator[tuple[range, np.ndarray]]:
        """Each chunk of ``region_hu`` with its (len, S, S) PET, in the order they finish."""
        ...
