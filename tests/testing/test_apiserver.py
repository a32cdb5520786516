"""The local API server's own pieces: label and field selectors, merge and JSON patches."""

from __future__ import annotations

import pytest

from nodeaudit.testing import apiserver


def test_selectors_and_patches() -> None:
    sel = apiserver.parse_label_selector("a=1,b!=2,c in (x, y),!d,e")
    assert sel({"a": "1", "c": "x", "e": ""}) and not sel({"a": "1", "c": "z", "e": ""})
    f = apiserver.parse_field_selector("spec.nodeName=n1,metadata.name!=x")
    assert f({"spec": {"nodeName": "n1"}, "metadata": {"name": "y"}})
    assert apiserver.merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    doc = apiserver.json_patch({"m": {"f": ["x"]}}, [{"op": "test", "path": "/m/f", "value": ["x"]},
                                                    {"op": "remove", "path": "/m/f/0"}])
    assert doc == {"m": {"f": []}}
    with pytest.raises(apiserver.ApiError):
        apiserver.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
