"""Keys: made, derived, hashed and checked (workers' and programmatic clients')."""
