"""The only torch code of ct2pet-node: networks, bridge sampler, pipeline and weights.

Importing this package is cheap: torch loads when :func:`load_pipeline` or
:class:`Pipeline` is first looked up here, so the CLI and the service can
import the package unconditionally and name the pipeline where they need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ct2pet_node.engine.pipeline import Pipeline, load_pipeline

__all__ = ["Pipeline", "load_pipeline"]


def __getattr__(name: str) -> object:
    # One definition of each, in engine.pipeline; looking it up here is what loads torch.
    if name in __all__:
        from ct2pet_node.engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
