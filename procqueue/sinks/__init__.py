"""Thin clients for the outside services jobs write to."""
