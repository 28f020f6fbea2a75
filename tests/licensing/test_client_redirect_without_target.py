"""A redirect whose ``Location`` is not a URL was taken for a lost answer: ``httpx`` raised
``RemoteProtocolError`` building the request it would follow, so a licence request was sent
three times (2.5 s of resend delays) and reported as "server unreachable"; and a 3xx without a
``Location`` escaped as a ``KeyError``. Both are redirects the client does not follow now,
named with their status and what to do, like a redirect to a URL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.licensing.test_client import URL, Clock, FakeServer, make_client

from skruntime.errors import LicenceError

CASES = {  # status, Location
    "invalid port": (301, "http://x:abc/v1"),
    "control character": (307, "/v1\x01"),
    "no location": (302, None),
    "multiple choices": (300, None),
}


def unusable(location: str | None) -> str:
    """What the error says of ``location``: missing, or why it is not a URL (httpx's words)."""
    if location is None:
        return "without a Location header"
    with pytest.raises(httpx.InvalidURL) as why:
        httpx.URL(URL).join(location)
    return f"to {location!r}, which is not a URL ({why.value})"


@pytest.mark.parametrize("path", ["/v1/public-key", "/v1/licences"])
@pytest.mark.parametrize("case", CASES)
def test_a_redirect_to_no_url_is_named_as_a_redirect(tmp_path: Path, path: str, case: str) -> None:
    status, location = CASES[case]
    headers = {} if location is None else {"Location": location}
    server, sent = FakeServer(), []
    handle = server.handle

    def redirect(request: httpx.Request) -> httpx.Response:
        if request.url.path == path:
            sent.append(request.method)
            return httpx.Response(status, headers=headers)
        return handle(request)

    server.handle = redirect  # type: ignore[method-assign]
    client = make_client(server, tmp_path / "state", Clock())
    client.resend_delays = (0.0, 0.0)  # a lost answer would be sent again twice
    with pytest.raises(LicenceError) as err:
        client.ensure_licence()
    method = "GET" if path == "/v1/public-key" else "POST"
    assert str(err.value) == (
        f"The licence server at {URL} redirects {method} {path} (HTTP {status}) "
        f"{unusable(location)}; "
        "the runtime follows no redirect of the licence server. Give the licence server's own "
        "URL as the server URL, or check the network path: a proxy or a captive portal may be "
        "in the way."
    )
    assert sent == [method]  # not sent again as a lost answer
    client.close()
