"""Parsing of S3's XML response bodies (and the one body we send)."""

from __future__ import annotations

import calendar
import datetime
import email.utils
import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape


def _strip_ns(root: ET.Element) -> ET.Element:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def _parse(content: bytes) -> ET.Element:
    return _strip_ns(ET.fromstring(content))


def parse_error(content: bytes) -> dict[str, str]:
    """``{'Code':..., 'Message':..., 'RequestId':...}`` from an error body; {} if unreadable."""
    try:
        root = _parse(content)
    except ET.ParseError:
        return {}
    return {child.tag: (child.text or "") for child in root}


_MONTHS = {m: i for i, m in enumerate(("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec").split(), 1)}


@functools.lru_cache(maxsize=1024)  # objects written together share their times: most are met again
def parse_time(text: str) -> float:
    """Seconds since the epoch from an ISO 8601 (XML) or RFC 1123 (header) time."""
    text = text.strip()
    if not text:
        return 0.0
    if "," in text:
        # HTTP's own form, "Sun, 06 Nov 1994 08:49:37 GMT", read directly (6x faster than email.utils)
        parts = text.split()
        if len(parts) == 6 and parts[5] == "GMT" and parts[2] in _MONTHS and len(parts[4]) == 8:
            hms = parts[4].split(":")
            return float(
                calendar.timegm(
                    (int(parts[3]), _MONTHS[parts[2]], int(parts[1]), int(hms[0]), int(hms[1]), int(hms[2]))
                )
            )
        return email.utils.parsedate_to_datetime(text).timestamp()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(text).timestamp()


@dataclass
class ListEntry:
    """One object in a listing."""

    key: str
    size: int
    etag: str
    mtime: float
    storage_class: str = ""


@dataclass
class ListPage:
    """One page of ListObjectsV2: objects, common prefixes, and where to go on."""

    entries: list[ListEntry] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    continuation: str | None = None


def parse_list_v2(content: bytes) -> ListPage:
    """Parse a ListObjectsV2 result, undoing ``encoding-type=url`` when the server applied it.

    Its ``<Contents>`` elements (a thousand a page) are read by :func:`_split_contents`
    when they are in the plain form servers send, the rest of the page by ElementTree; a
    page in any other form is read by ElementTree whole (the same answer, in two to three
    times the time: a million-entry listing is a thousand pages).
    """
    split = _split_contents(content)
    if split is None:
        return _parse_list_tree(ET.fromstring(content))
    rest, columns = split
    return _parse_list_tree(ET.fromstring(rest), columns)


def _parse_list_tree(root: ET.Element, columns: dict[str, list[str]] | None = None) -> ListPage:
    """The page from its parsed document; ``columns``: its ``<Contents>``, read already and
    taken out of ``root`` (each field's texts, references replaced, one per element in
    document order; a field no element has is left out).

    Names are looked up in the root's namespace, not stripped from every element first: a
    page of 1,000 keys is parsed in two thirds of the time.
    """
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"

    def dec(text: str | None) -> str:
        text = text or ""
        # A key of bytes that are not UTF-8 (a server's, never AWS's) keeps them as surrogate
        # escapes: no path can name it, and listings leave it out with a log line; replaced by
        # U+FFFD it was a name ls showed and every lookup of said was not there.
        if encoded and ("%" in text or "+" in text):
            return unquote_plus(text, errors="surrogateescape")
        return text

    page = ListPage()
    append = page.entries.append
    if columns:
        count = len(next(iter(columns.values())))
        none: list[str | None] = [None] * count
        for key, size, etag, mtime, storage_class in zip(
            *(columns.get(name, none) for name in _ENTRY_FIELDS), strict=True
        ):
            append(
                ListEntry(
                    key=dec(key),
                    size=int(size or 0),
                    etag=(etag or "").strip('"'),
                    mtime=parse_time(mtime or ""),
                    storage_class=storage_class or "",
                )
            )
    for c in root.iterfind(ns + "Contents"):
        append(
            ListEntry(
                key=dec(c.findtext(ns + "Key")),
                size=int(c.findtext(ns + "Size") or 0),
                etag=(c.findtext(ns + "ETag") or "").strip('"'),
                mtime=parse_time(c.findtext(ns + "LastModified") or ""),
                storage_class=c.findtext(ns + "StorageClass") or "",
            )
        )
    for p in root.iterfind(ns + "CommonPrefixes"):
        page.prefixes.append(dec(p.findtext(ns + "Prefix")))
    page.truncated = (root.findtext(ns + "IsTruncated") or "").lower() == "true"
    page.continuation = root.findtext(ns + "NextContinuationToken")
    return page


#: The fields of a listed object that a ListEntry holds, in ListEntry's order.
_ENTRY_FIELDS = ("Key", "Size", "ETag", "LastModified", "StorageClass")
#: Each field's elements in any form (a tag of that name), and in the plain one (``<Key>text</Key>``).
_FIELD_TAGS = {name: re.compile(r"<%s[\s/>]" % name) for name in _ENTRY_FIELDS}
_FIELD_TEXTS = {name: re.compile(r"<%s>([^<]*)</%s>" % (name, name)) for name in _ENTRY_FIELDS}
#: One ``<Contents>`` element after another, with nothing but blanks between.
_CONTENTS_NEXT = re.compile(r"</Contents>\s*<Contents>")
#: The character references and the entities XML predefines (a page holds no others).
_REFERENCE = re.compile(r"&(#[0-9]+|#x[0-9a-fA-F]+|lt|gt|amp|quot|apos);")
_UTF8 = re.compile(r"encoding=[\"']utf-8[\"']", re.IGNORECASE)
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _split_contents(content: bytes) -> tuple[bytes, dict[str, list[str]]] | None:
    """A ListObjectsV2 page without its ``<Contents>`` elements, and what they hold (each of
    :data:`_ENTRY_FIELDS`' texts, references replaced), read by regular expressions.

    None, and the page is left to ElementTree whole, unless it is in the plain form servers
    send: its ``<Contents>`` one after another (nothing else between them), unprefixed,
    without attributes; each field (which no other element of the page has) in each of them
    or in none, as ``<Key>text</Key>``; only XML's own references; no carriage return (XML
    would make it a line feed); and nothing (a comment, CDATA, an encoding other than
    UTF-8) that could make a pattern read the page otherwise than a parser.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "<!" in text or "\r" in text:
        return None  # a comment, CDATA or a DOCTYPE; a CR
    declaration = text[: text.find("?>")] if text.startswith("<?xml") else ""
    if "encoding=" in declaration and not _UTF8.search(declaration):
        return None
    count = text.count("<Contents>")
    # "Contents" anywhere else (a prefixed tag, one with attributes, a name): read whole
    if not count or text.count("</Contents>") != count or text.count("Contents") != 2 * count:
        return None
    first, last = text.index("<Contents>"), text.rindex("</Contents>") + len("</Contents>")
    if len(_CONTENTS_NEXT.findall(text, first, last)) != count - 1:
        return None
    columns: dict[str, list[str]] = {}
    for name in _ENTRY_FIELDS:
        texts = _FIELD_TEXTS[name].findall(text, first, last)
        if len(texts) not in (0, count) or len(_FIELD_TAGS[name].findall(text)) != len(texts):
            return None
        if texts:
            columns[name] = texts
    for name, texts in columns.items():
        for i, value in enumerate(texts):
            if "&" in value:
                if name == "ETag":  # every ETag is in quotes, which some servers send as &#34;
                    value = value.replace("&#34;", '"').replace("&quot;", '"')
                plain = _unescape(value) if "&" in value else value
                if plain is None:
                    return None
                texts[i] = plain
    return (text[:first] + text[last:]).encode("utf-8"), columns


def _unescape(text: str) -> str | None:
    """``text`` with its references replaced; None if it holds an ``&`` that is none of them."""
    out = _REFERENCE.sub(_reference, text)
    if "&" in _REFERENCE.sub("", text):
        return None
    return out


def _reference(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref[0] != "#":
        return _ENTITIES[ref]
    return chr(int(ref[2:], 16) if ref[1] == "x" else int(ref[1:]))


def parse_text(content: bytes, tag: str) -> str:
    """The text of the first element named ``tag`` (e.g. UploadId, ETag)."""
    root = _parse(content)
    if root.tag == tag:
        return root.text or ""
    return root.findtext(".//" + tag) or ""


def parse_uploads(content: bytes) -> tuple[list[tuple[str, str]], str | None, str | None]:
    """ListMultipartUploads: ([(key, upload_id)], next key marker, next upload id marker)."""
    root = _parse(content)
    uploads = [(u.findtext("Key") or "", u.findtext("UploadId") or "") for u in root.findall("Upload")]
    if (root.findtext("IsTruncated") or "").lower() == "true":
        return uploads, root.findtext("NextKeyMarker"), root.findtext("NextUploadIdMarker")
    return uploads, None, None


def parse_delete_errors(content: bytes) -> list[tuple[str, str]]:
    """DeleteObjects result: [(key, code)] of the keys that failed."""
    root = _parse(content)
    return [(e.findtext("Key") or "", e.findtext("Code") or "") for e in root.findall("Error")]


def complete_multipart_body(parts: Iterable[tuple[int, str]], crc32: dict[int, str] | None = None) -> bytes:
    """The CompleteMultipartUpload request body for ``[(part_number, etag)]``.

    ``crc32``: part number -> its ``x-amz-checksum-crc32`` (an upload begun with that algorithm).
    """
    crc32 = crc32 or {}
    items = "".join(
        '<Part><PartNumber>%d</PartNumber><ETag>"%s"</ETag>%s</Part>'
        % (
            n,
            escape(etag.strip('"')),
            "<ChecksumCRC32>%s</ChecksumCRC32>" % escape(crc32[n]) if n in crc32 else "",
        )
        for n, etag in sorted(parts)
    )
    return ("<CompleteMultipartUpload>%s</CompleteMultipartUpload>" % items).encode()


def delete_objects_body(keys: Iterable[str], etags: Mapping[str, str] | None = None) -> bytes:
    """The DeleteObjects request body (quiet mode); a key with an ETag in ``etags`` is deleted
    only if S3 still has that version (else its error is ``PreconditionFailed``)."""
    etags = etags or {}
    items = "".join(
        "<Object><Key>%s</Key>%s</Object>"
        % (escape(k), "<ETag>\"%s\"</ETag>" % escape(etags[k].strip('"')) if etags.get(k) else "")
        for k in keys
    )
    return ("<Delete><Quiet>true</Quiet>%s</Delete>" % items).encode("utf-8")
