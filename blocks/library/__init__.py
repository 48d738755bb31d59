"""Importing this package registers every block."""
from blocks.library import (activation, attention, composite, conv, ghost,  # noqa: F401
                            norm_pool, regularisation)
