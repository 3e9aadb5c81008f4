"""The keywords a translation of CT slices is asked with, written once.

The engine's pipeline, the cluster's translator and the worker's view of
either (:class:`~ct2pet_node.service.translator.Translator`) all take them,
so they are declared here, below all three, instead of in each signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

# progress(done_units, total_units): one unit per slice per sampling step.
Progress = Callable[[int, int], None]


class TranslationRequest(TypedDict, total=False):
    """Optional keywords of ``translate_region``; a missing one takes the model's or a neutral default.

    Attributes
    ----------
    kvp : float or None
        The CT's KVP tag; used only when the model's kVp policy is ``from_ct``.
    steps, eta : int or None, float or None
        Sampling steps and noise scale (default: the weights' own).
    seed : int or None
        Noise seed; the noise of slice i derives from (seed, i). Random when None.
    progress : Progress or None
        Told of the work done while the slices are translated.
    first_slice_index : int
        Index of the first slice in its whole volume (0), so that a volume
        translated in chunks gets the noise, and the output, of one call.
    """

    kvp: float | None
    steps: int | None
    eta: float | None
    seed: int | None
    progress: Progress | None
    first_slice_index: int
