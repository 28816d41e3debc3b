"""Benchmarks that print figures side by side with Docker's own drivers (`make bench`)."""
