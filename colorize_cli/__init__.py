"""colorize: diverse colorizations of black-and-white photos (Deshpande et al., CVPR 2017).

    from colorize_cli import Colorizer
    samples, weights = Colorizer.load().colorize("photo.jpg", samples=8)
"""

from .common.version import __version__

__all__ = ["Colorizer", "__version__"]


def __getattr__(name: str):
    # lazily: `colorize --help` must not pay for importing torch
    if name == "Colorizer":
        from .api import Colorizer

        return Colorizer
    raise AttributeError(f"module 'colorize_cli' has no attribute {name!r}")
