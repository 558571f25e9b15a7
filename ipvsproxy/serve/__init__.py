"""The agent's HTTP servers: the proxy's own health, Services' health-check node ports, and
metrics."""
