"""Credentials in URLs never reach config.json, a log line or an error message."""

from __future__ import annotations

import pytest

from flb.run.redaction import redact_config, redact_text, redact_url


@pytest.mark.parametrize(
    "url, redacted",
    [
        ("https://alice:pw@rpc.example.org:8545/v1", "https://***@rpc.example.org:8545/v1"),
        ("https://user:p@ss@host/x", "https://***@host/x"),  # an unencoded @ in the password
        ("https://token@host", "https://***@host"),
        ("wss://h/ws?token=abc&chain=1", "wss://h/ws?token=***&chain=1"),
        ("https://h/?Api_Key=1&sig=2&page=3", "https://h/?Api_Key=***&sig=***&page=3"),
        ("http://[::1", "***"),  # unparsable: nothing of it is shown
    ],
)
def test_secrets_in_urls_are_replaced(url, redacted):
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8545",
        "https://h/users/@me",
        "https://h/?a=1&b=%20x#frag",
        "sqlite:////runs/x/tracking/mlflow.db",
    ],
)
def test_urls_without_secrets_stay_byte_for_byte(url):
    assert redact_url(url) == url


def test_every_url_in_a_text_is_redacted():
    text = "cannot reach https://a:b@h/x or http://c:d@e (retrying)"
    assert redact_text(text) == "cannot reach https://***@h/x or http://***@e (retrying)"


def test_config_dicts_are_redacted_at_any_depth_and_not_modified():
    config = {"chain": {"rpc_url": "https://u:secret@h", "chain_id": 5}, "urls": ["https://x?key=k"], "n": 1}
    assert redact_config(config) == {
        "chain": {"rpc_url": "https://***@h", "chain_id": 5},
        "urls": ["https://x?key=***"],
        "n": 1,
    }
    assert config["chain"]["rpc_url"] == "https://u:secret@h"
