"""{{ cookiecutter.project_name }}: a LiveKit voice agent worker (see README.md)."""

__version__ = "0.1.0"
