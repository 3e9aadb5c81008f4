"""What the service needs of a translation engine, and nothing of torch or Ray.

The local :class:`~ct2pet_node.engine.pipeline.Pipeline` and the cluster's
:class:`~ct2pet_node.cluster.translator.RayTranslator` both satisfy it; the
composition root picks one, and the worker and the folder conversion take
whichever they are given.
"""

from __future__ import annotations

from typing import Protocol, Unpack

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
