"""`yurthub.proxy.headers.headers_from`: fields as llhttp parsed them, into `Headers`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from yurthub.proxy import headers as module
from yurthub.proxy.headers import field, headers_from, set_field, strip_hop_by_hop

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_names = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
_values = st.binary(max_size=20).filter(lambda v: b"\r" not in v and b"\n" not in v)


def _slow(fields: list[tuple[bytes, bytes]]) -> Headers:
    headers = Headers()
    for name, value in fields:
        headers.addRawHeader(name, value)
    return headers


class HeadersFromTests(SynchronousTestCase):
    def test_this_twisted_is_filled_directly(self) -> None:
        self.assertTrue(module._DIRECT)

    @given(st.lists(st.tuples(_names, _values), max_size=15))
    def test_same_headers_as_add_raw_header(self, fields: list[tuple[bytes, bytes]]) -> None:
        fast, slow = headers_from(fields), _slow(fields)
        self.assertEqual(list(fast.getAllRawHeaders()), list(slow.getAllRawHeaders()))
        for name, _ in fields:
            self.assertEqual(fast.getRawHeaders(name), slow.getRawHeaders(name))
            self.assertEqual(fast.getRawHeaders(name.lower()), slow.getRawHeaders(name.upper()))

    def test_repeated_names_keep_every_value_in_order(self) -> None:
        headers = headers_from([(b"Accept", b"a"), (b"x-one", b"1"), (b"accept", b"b"), (b"X-ONE", b"2")])
        self.assertEqual(headers.getRawHeaders(b"accept"), [b"a", b"b"])
        self.assertEqual(headers.getRawHeaders(b"X-One"), [b"1", b"2"])

    def test_a_twisted_without_raw_headers_gets_add_raw_header(self) -> None:
        self.patch(module, "_DIRECT", False)
        fields = [(b"Content-Type", b"application/json"), (b"content-type", b"text/plain")]
        self.assertEqual(list(headers_from(fields).getAllRawHeaders()), list(_slow(fields).getAllRawHeaders()))

    def test_names_learnt_are_bounded(self) -> None:
        self.patch(module, "_KEYS", {})
        self.patch(module, "_MAX_KEYS", 3)
        headers = headers_from([(b"x-%d" % i, b"v") for i in range(10)])
        self.assertEqual(len(module._KEYS), 3)
        self.assertEqual(headers.getRawHeaders(b"x-9"), [b"v"])


_hop_names = st.sampled_from([b"Connection", b"keep-alive", b"TE", b"te", b"Upgrade", b"Transfer-Encoding",
                              b"Host", b"Content-Length", b"Accept", b"X-Custom", b"Proxy-Authorization"])


class StripHopByHopTests(SynchronousTestCase):
    @given(st.lists(st.tuples(st.one_of(_hop_names, _names), _values), max_size=12))
    def test_the_quick_path_drops_what_the_general_one_does(self, fields: list[tuple[bytes, bytes]]) -> None:
        also = frozenset({b"host", b"content-length"})
        self.assertTrue(module._DIRECT)
        quick = strip_hop_by_hop(headers_from(fields), also_drop=also)
        module._DIRECT = False  # this example only (a patch would last for all of them)
        try:
            general = strip_hop_by_hop(_slow(fields), also_drop=also)
        finally:
            module._DIRECT = True
        self.assertEqual(list(quick.getAllRawHeaders()), list(general.getAllRawHeaders()))

    def test_hop_by_hop_and_listed_fields_are_dropped(self) -> None:
        headers = headers_from(
            [(b"Accept", b"a"), (b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"s"), (b"TE", b"trailers"),
             (b"Host", b"h")]
        )
        strip_hop_by_hop(headers, also_drop=frozenset({b"host"}))
        self.assertEqual(list(headers.getAllRawHeaders()), [(b"Accept", [b"a"])])


class FieldTests(SynchronousTestCase):
    @given(st.lists(st.tuples(_names, _values), max_size=10), _names)
    def test_field_reads_as_get_raw_headers(self, fields: list[tuple[bytes, bytes]], name: bytes) -> None:
        headers = headers_from(fields)
        for asked in (name, name.lower(), *(n for n, _ in fields)):
            self.assertEqual(field(headers, asked), headers.getRawHeaders(asked))

    @given(st.lists(st.tuples(_names, _values), max_size=10), _names, _values)
    def test_set_field_sets_as_set_raw_headers(self, fields: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
        ours, theirs = headers_from(fields), headers_from(fields)
        set_field(ours, name.lower(), value)
        theirs.setRawHeaders(name.lower(), [value])
        self.assertEqual(list(ours.getAllRawHeaders()), list(theirs.getAllRawHeaders()))

    def test_without_direct_access_the_public_methods_are_used(self) -> None:
        self.patch(module, "_DIRECT", False)
        headers = Headers()
        set_field(headers, b"content-type", b"application/json")
        self.assertEqual(field(headers, b"Content-Type"), [b"application/json"])
        self.assertIsNone(field(headers, b"accept"))
