"""What every fake translator of the worker's ``Translator`` protocol shares: a model's identity.

Import as ``from fakes import FakeModel`` (``tests/`` is on the path). Each test module keeps
its own ``translate_region``: what the fake computes is what that module's tests assert.
"""

from ct2pet_node.domain.model_grid import ModelFrame


class FakeModel:
    """The model attributes the worker, ``convert`` and ``status`` read (ct2pet_node.service.worker.Translator)."""

    model_id = "fake-model"
    image_size = 64
    output_units = "relative"
    default_steps = 3
    default_eta = 1.0
    # ctfactory's default series: 64 x 64 at 0.9 mm, so its region is the model's matrix as it is.
    frame = ModelFrame(64, 0.9)
