import {{ cookiecutter.package_name }}


def test_package_imports() -> None:
    assert {{ cookiecutter.package_name }}.__version__
