"""pynet's plugin layer (see docs/design.md)."""
