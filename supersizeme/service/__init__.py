"""The service: an upscaler behind a Flask app (``app.create_app``) and a command line.

The app factory lives in ``app``, not here, so that the image layer, the tiling and the
upscaler (which the toolchain's evaluation uses to measure exactly what is served) import
without Flask.
"""
