"""The buffering front: nginx before gunicorn, configured and started by ``front.serve``."""
