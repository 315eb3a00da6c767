"""What every layer shares: the one error type, YAML files read with their errors named, and the
base of every config."""
