"""Super Size Me: two products in one package.

- ``supersizeme.service``: the REST service and the batch command line: HTTP, admission,
  workers, telemetry, the image layer, tiling and the runtime that runs a model folder.
- ``supersizeme.toolchain``: what makes a model folder: the degradation, quality metrics,
  training in Keras and PyTorch, evaluation, export and figures.

Both share the model's definition: ``modelspec`` (a model folder and its architecture,
standard library only), ``rdn`` (the network in Keras) and ``machine`` (what the CPU can do).
The service never imports the toolchain; the toolchain never imports Flask
(tests/test_layout.py). Nothing is imported here, so that importing either product costs
only what it uses.
"""
