"""pynet's store layer (see shared/docs/design.md)."""
