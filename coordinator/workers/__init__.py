"""Workers: registration and keys (the registry), and who is online and what they serve
(presence)."""
