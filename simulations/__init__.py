"""fedadmet: simulations."""
