"""Running the agent as a service: systemd notifications, metrics, health, the doctor and the unit installer."""
