"""Reasoning signatures: stable for one key, different across keys and texts, and checked in
constant time."""

from __future__ import annotations

from seekserve.protocol.signing import sign_reasoning, signing_key, verify_reasoning


def test_a_signature_verifies_only_its_own_text_under_its_own_key() -> None:
    key = signing_key(b"secret-a")
    signature = sign_reasoning(key, "I should call the weather tool.")
    assert signature == sign_reasoning(signing_key(b"secret-a"), "I should call the weather tool.")
    assert verify_reasoning(key, "I should call the weather tool.", signature)
    assert not verify_reasoning(key, "I should call the weather tool!", signature)
    assert not verify_reasoning(signing_key(b"secret-b"), "I should call the weather tool.",
                                signature)
    assert not verify_reasoning(key, "I should call the weather tool.", signature[:-1] + "A")
    assert signing_key(b"secret-a") != b"secret-a"
