"""Placeholder replaced below."""


def register(app) -> None:  # noqa: ANN001
    return None
