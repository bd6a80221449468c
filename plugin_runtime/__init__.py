"""Running plugins: contracts, dependency order, spawning and supervision."""
