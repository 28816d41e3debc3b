"""pynet's drivers layer (see shared/docs/design.md)."""
