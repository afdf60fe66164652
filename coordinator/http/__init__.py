"""The coordinator's HTTP APIs: routes as plain functions, by area."""
