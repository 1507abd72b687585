"""spiread's version, at the bottom of the layers: the package's
`__version__`, and what `spiread --version` and exported files record."""

__version__ = "0.1.0"
