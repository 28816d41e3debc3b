"""pynet's drivers layer (see docs/design.md)."""
