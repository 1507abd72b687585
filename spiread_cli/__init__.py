"""spiread: evaluate and differentiate matrix expression files (.ad)."""

__version__ = "0.1.0"
