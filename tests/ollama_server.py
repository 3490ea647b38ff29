"""The protocol-faithful fake Ollama server, for tests and benchmarks: it lives in the package
(`labelers.simulated`, which `spritesafe demo` uses too); this module keeps the name the tests
and benchmarks import it by."""

from labelers.simulated import *  # noqa: F403  (a re-export: the names are simulated.__all__)
from labelers.simulated import __all__ as __all__
