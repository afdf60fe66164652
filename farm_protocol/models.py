"""Model names as Ollama spells them: a name without a tag means ``:latest``."""


def normalize_model(name: str) -> str:
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def display_model(name: str) -> str:
    """The short form people type: ``llama3`` for ``llama3:latest``."""
    return name.removesuffix(":latest")
