"""Test package, so plugins can be named tests.<module> in conftest.pytest_plugins."""
