__version__ = "0.1.0"
# Artifacts with a different major format cannot be loaded; bump when the layout changes.
ARTIFACT_FORMAT_VERSION = 1
