"""An embedding job's text: vectors written with 9 significant digits read back exactly as
the float32 values Ollama computes."""

import random
import struct

import pytest

from farm_protocol.payloads import embedding_text, embeddings_of


def test_float32_vectors_come_back_exactly() -> None:
    rng = random.Random(7)
    vectors = [
        [
            struct.unpack("<f", struct.pack("<f", rng.uniform(-1, 1) * 10 ** rng.randint(-8, 3)))[0]
            for _ in range(64)
        ]
        for _ in range(5)
    ]
    text = embedding_text(vectors)
    back = embeddings_of(text)
    as_f32 = [[struct.pack("<f", x) for x in v] for v in back]
    assert as_f32 == [[struct.pack("<f", x) for x in v] for v in vectors]
    assert text.count("\n") == 5


def test_a_value_json_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        embedding_text([[0.5, float("nan")]])
