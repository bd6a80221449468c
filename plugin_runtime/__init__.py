"""Running plugins as an agent: contracts, dependency order, spawning and supervision,
and the agent's link to the broker (the protocol only: no import of the broker)."""
