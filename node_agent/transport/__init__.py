"""MQTT transport shared by the agent and the client library."""
