"""colorize: diverse colorizations of black-and-white photos (Deshpande et al., CVPR 2017)."""

__version__ = "0.1.0"
