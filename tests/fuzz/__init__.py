"""The fuzz tier: Hypothesis property tests of everything pynet reads from outside.

What it proves: every route of plugin/api/routes.py (Docker's) and of the admin API under
/pynet/ answers generated input (the right shapes with wrong types, random nesting, huge strings,
unicode, missing and extra fields, bytes that are not JSON) on a real Unix socket with JSON, an
`{"Err", "Error"}` error under 500, no traceback and nothing logged at error level, and leaves
the store and the kernel as they were when it refuses (test_api.py); and that option parsing
(drivers/options.py and each mode's table) returns a config or an InvalidRequest naming what it
refused, accepting only names the kernel takes and numbers Docker's drivers would (test_options.py).
IPAM inputs (subnets, ranges, gateways, pool options) go through the IPAM routes.

It needs nothing (no root, no Docker). CI runs a fixed number of examples, drawn the same way
every run (the `ci` profile in conftest.py: `derandomize=True`, no example database), about
500 in all. To search longer and at random:

    PYNET_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/fuzz        # ten times as many
    PYNET_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/fuzz --hypothesis-seed=N

A failure prints the smallest input that shows it; keep it as an `@example` (test_api.py
REGRESSIONS, or on test_options.py's test) with the fix.
"""
