"""The engine on a Ray cluster: the one room that imports ray (``[engine] backend = "ray"``).

``translator`` is what the node holds: a :class:`~ct2pet_node.service.worker.Translator`
whose chunks run on Ray actors. It talks to Ray through ``driver``, run in a
child process, because a Ray driver is ended by Ray itself when the head is
lost; the node must outlive its cluster. ``actor`` is the code each Ray actor
runs: the pipeline loaded once, after checking it is the node's model.
Importing this package imports no ray and no torch.
"""
