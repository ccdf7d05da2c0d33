"""mdpipe's shared package: settings, structured logs, metrics and health endpoints, the CLI.

Every component (mdl, mdq, mdp, mdc, wds, scp, and the emulator sim) imports its configuration,
logging and observability from here, so that they behave the same way.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mdpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
