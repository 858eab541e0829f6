"""The ``fedadmet`` command line: parsing, printing and exit codes, one module per group."""
