"""Fixtures and fakes for testing a scheduler against real node-agent processes."""
