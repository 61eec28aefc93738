"""Entry point: `python agent.py COMMAND`; run `python agent.py --help` for the commands.

`python -m livekit.agents start agent.py` also works: it finds `server` here.
"""

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.worker import server

__all__ = ["server"]

if __name__ == "__main__":
    main()
