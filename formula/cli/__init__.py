"""The `formula` command line."""
