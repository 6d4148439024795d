"""Input series for promtool rule tests."""

from __future__ import annotations

from otel_tokens import names


def tokens(user: str, values: str, token_type: str = "input", instance: str = "app:9464") -> dict:
    return {"series": f'{names.PROM_QUOTA_TOKENS}{{user_id="{user}",department="eng",gen_ai_token_type="{token_type}",'
                      f'instance="{instance}",job="app"}}', "values": values}
