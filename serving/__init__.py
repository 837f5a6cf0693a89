"""The HTTP API around ModelInferer: settings, schemas, routes, metrics and micro-batching."""
