"""The model toolchain: it makes the model folders that the service serves.

It imports the shared model definition and the service's Flask-free upscaler, never Flask,
so it runs on a GPU machine that has PyTorch and nothing of the service.
"""
