"""Packaged as ``spiread_cli.grammar`` so the grammar file travels inside the wheel."""
