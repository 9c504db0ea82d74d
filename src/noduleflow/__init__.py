"""noduleflow: lung nodule detection in chest CT, from scans on disk to a served model."""

__version__ = "0.1.0"
