"""What every layer may use: typed `key=value` configs, the usage-error types and the name
registry. Imports nothing else of boltzkit."""
