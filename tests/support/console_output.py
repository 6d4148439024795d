"""Parse what the SDK's console exporters print (one pretty JSON document per span / collection)."""

from __future__ import annotations

import json
from typing import Any


def json_documents(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    docs = []
    pos = 0
    text = "\n" + text
    while True:
        start = text.find("\n{", pos)
        if start < 0:
            break
        try:
            doc, end = decoder.raw_decode(text, start + 1)
        except json.JSONDecodeError:
            pos = start + 2
            continue
        docs.append(doc)
        pos = end
    return docs


def spans(text: str) -> list[dict[str, Any]]:
    return [d for d in json_documents(text) if "context" in d and "attributes" in d]


def metric_points(text: str, name: str) -> list[dict[str, Any]]:
    """Data points of the metric `name` from the last console collection that has it."""
    found: list[dict[str, Any]] = []
    for doc in json_documents(text):
        for rm in doc.get("resource_metrics", []):
            for sm in rm["scope_metrics"]:
                for metric in sm["metrics"]:
                    if metric["name"] == name:
                        found = metric["data"]["data_points"]
    return found
