"""Pydantic models of PROTOCOL.md: the only place JSON shapes are defined."""
