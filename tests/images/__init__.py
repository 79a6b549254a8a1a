"""The images feature's tests."""
