"""The notifications feature's tests."""
