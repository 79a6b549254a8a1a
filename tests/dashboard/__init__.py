"""The dashboard feature's tests."""
