"""fedadmet: protocols."""
