"""The command line: one module per verb, each a thin shell over the library."""
