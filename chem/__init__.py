"""fedadmet: chem."""
