"""Payment service providers: the connector interface, the connectors and the simulator."""
