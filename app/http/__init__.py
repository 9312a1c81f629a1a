"""The HTTP transport: body reading, the REST routes, error mapping and middleware."""
