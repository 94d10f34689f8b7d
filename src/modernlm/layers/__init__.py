"""The decoder's building blocks, one per file."""
