"""Boolean request fields are strict: OpenAI answers 400 to "stream": "yes", and so does the shim."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from turnout.shim import protocol


@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_stream_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ValidationError):
        protocol.ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": value}
        )
    ok = protocol.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    assert ok.stream is True
