"""The database: its schema, opening and upgrading it, the one thread that runs every
query, hand-written statements, and the conversion from rows to views."""
