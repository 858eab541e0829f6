"""fedadmet: participant."""
