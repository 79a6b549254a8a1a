"""The search feature's tests."""
