"""The async client library that drives a pool of agents (PROTOCOL.md's driver side)."""
