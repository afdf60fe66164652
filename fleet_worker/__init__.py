"""The fleet worker: runs beside Ollama on a machine nobody can reach, dials out to the
broker, takes jobs on its own topic and streams tokens back."""
