"""HTTP layer: routes that only translate HTTP, their pydantic protocol, dependencies, error mapping."""
