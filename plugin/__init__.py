"""pynet's plugin layer (see shared/docs/design.md)."""
