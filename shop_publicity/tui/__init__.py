"""The back office's Textual screens (the only shop package that imports textual)."""
