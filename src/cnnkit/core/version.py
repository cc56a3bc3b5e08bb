"""cnnkit's version, as installed (a run records it; `cnnkit --version` prints it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
