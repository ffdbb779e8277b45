"""The agent's durable state on the node."""
