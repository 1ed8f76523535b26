"""The demo prompts shipped with the package (our own text, not HH-RLHF rows)."""

from __future__ import annotations

import pytest

from cyclealign.data import demo_prompts, load_demo_prompts


def test_demo_prompts_are_short_chats():
    rows = demo_prompts()
    assert len(rows) >= 8
    for row in rows:
        (message,) = row["prompt"]
        assert message["role"] == "user" and 0 < len(message["content"]) < 120
    assert load_demo_prompts(3)["prompt"] == [r["prompt"] for r in rows[:3]]
    with pytest.raises(ValueError, match="num_samples"):
        demo_prompts(0)
