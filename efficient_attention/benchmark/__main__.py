"""``python -m efficient_attention.benchmark``: see ``cli``."""

from .cli import main

main()
