"""Entry point: `python agent.py dev | start | console | download-files | doctor | token | simulate`.

`python -m livekit.agents start agent.py` also works: it finds `server` here.
"""

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.worker import server

__all__ = ["server"]

if __name__ == "__main__":
    main()
