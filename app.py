"""The WSGI entry point: ``gunicorn app:app`` (see gunicorn.conf.py)."""

from supersizeme.service.app import create_app

app = create_app()
