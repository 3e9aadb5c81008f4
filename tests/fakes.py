"""What every fake translator of the worker's ``Translator`` protocol shares: a model's identity.

Import as ``from fakes import FakeModel`` (``tests/`` is on the path). Each test module keeps
its own ``__call__``: what the fake computes is what that module's tests assert.
"""


class FakeModel:
    """The model attributes the worker, ``convert`` and ``status`` read (ct2pet_node.service.worker.Translator)."""

    model_id = "fake-model"
    image_size = 64
    output_units = "relative"
    default_steps = 3
    default_eta = 1.0
