"""The only torch code of ct2pet-node: networks, bridge sampler, pipeline and weights.

Importing this package is cheap: torch loads when :func:`load_pipeline` or
:class:`Pipeline` is first looked up here, so the CLI and the service can
import the package unconditionally and name the pipeline where they need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ct2pet_node.engine.loading import load_pipeline
    from ct2pet_node.engine.pipeline import Pipeline

__all__ = ["Pipeline", "load_pipeline"]


def __getattr__(name: str) -> object:
    # One definition of each, in engine.pipeline and engine.loading; looking it up here is what
    # loads torch.
    if name == "Pipeline":
        from ct2pet_node.engine.pipeline import Pipeline

        return Pipeline
    if name == "load_pipeline":
        from ct2pet_node.engine.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
