"""pynet's store layer (see docs/design.md)."""
