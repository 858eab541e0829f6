"""fedadmet: coordinator."""
