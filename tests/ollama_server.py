"""The protocol-faithful fake Ollama server, for tests and benchmarks: it lives in the package
(`labelers.simulated`, which `spritesafe demo` uses too); this module keeps the name the tests
and benchmarks import it by."""

from labelers.simulated import (
    DEFAULT_CONTENT,
    DEFAULT_MODEL,
    GARBAGE_CONTENT,
    INVALID_CONTENT,
    ChatRequestInfo,
    FakeModel,
    FakeOllama,
    Fault,
    NoisyOracle,
    RecordedRequest,
    Responder,
    default_responder,
    fake_digest,
    rubric_responder,
    sheet_layout,
)

__all__ = [
    "DEFAULT_CONTENT",
    "DEFAULT_MODEL",
    "GARBAGE_CONTENT",
    "INVALID_CONTENT",
    "ChatRequestInfo",
    "FakeModel",
    "FakeOllama",
    "Fault",
    "NoisyOracle",
    "RecordedRequest",
    "Responder",
    "default_responder",
    "fake_digest",
    "rubric_responder",
    "sheet_layout",
]
