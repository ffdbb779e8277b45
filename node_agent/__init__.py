"""node-agent: an Azure Batch style compute-node agent driven over MQTT."""

__version__ = "0.1.0"
