"""`format` values as regexes over the *decoded* string (regex.py's dialect, full match); strings.py turns each
into the JSON texts that write it. Each is exact for its RFC or a documented stricter subset (never looser):

| format | definition | subset |
|---|---|---|
| `date` | RFC 3339 full-date | exact: month lengths, Feb 29 only in leap years (Gregorian: divisible by 4, centuries by 400) |
| `time` | RFC 3339 full-time | the offset (`Z` or ±hh:mm) is required, as in RFC 3339; no leap second (`:60`); upper-case `Z` only |
| `date-time` | RFC 3339 date-time | `date` `T` `time` as above; upper-case `T` only |
| `email` | RFC 5321 Mailbox | a dot-atom local part (no quoted local part) and a domain name (no address literal) |
| `hostname` | RFC 1123 | at most 8 labels of 1–30 letters, digits and inner hyphens (RFC 1123: 63, and 253 in all); no `--` in a label's 3rd and 4th places (no IDNA A-labels, `xn--`) |
| `ipv4` | RFC 2673 dotted quad | exact: four 0–255 without leading zeros |
| `ipv6` | RFC 4291 text forms | exact: 8 groups, `::` once, an embedded IPv4 tail; no zone id |
| `uuid` | RFC 4122 | exact: 8-4-4-4-12 hex digits, either case |
| `uri` | RFC 3986 URI | an absolute URI; no `IPvFuture` host (`[v1.x]`) |
| `uri-reference` | RFC 3986 URI-reference | a URI or a relative reference; no `IPvFuture` host |
| `iri`, `iri-reference` | RFC 3987 | as `uri`, `uri-reference` with RFC 3987's Unicode characters; no `IPvFuture` host |
| `uri-template` | RFC 6570 | exact (level 4; an apostrophe is a literal, as the test suite reads it) |
| `json-pointer` | RFC 6901 | exact |
| `relative-json-pointer` | draft-handrews-relative-json-pointer-01 | exact (without the later draft's `+n` / `-n` index manipulation) |
| `duration` | RFC 3339 appendix A | exact (ISO 8601 durations: `P1Y2M`, `PT3H`, `P4W`) |

    >>> from decspec.stdlib.grammars.regex import compile_regex
    >>> [compile_regex(FORMATS["date"]).matches(d) for d in ("2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2021-04-31")]
    [True, False, False, True, False]
"""
from __future__ import annotations

MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
             r"|02-(?:0[1-9]|1[0-9]|2[0-8]))")
LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
DATE = rf"(?:[0-9]{{4}}-{MONTH_DAY}|{LEAP_YEAR}-02-29)"
TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
AN, LDH = "[A-Za-z0-9]", "[A-Za-z0-9-]"


def label(longest: int) -> str:
    """A host name label of 1..longest letters, digits and inner hyphens, without '--' in places 3-4 (IDNA)."""
    return rf"(?:{AN}(?:{LDH}?{AN})?|{AN}{LDH}(?:{AN}{LDH}{{0,{longest - 4}}}|-(?:{AN}{LDH}{{0,{longest - 5}}})?){AN})"


LABEL = label(63)
HOST_LABEL = label(30)  # hostname: at most 8 labels of at most 30 characters (247 in all, under RFC 1123's 253)
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{OCTET}(?:\.{OCTET}){{3}}"
H16 = r"[0-9a-fA-F]{1,4}"


def ipv6() -> str:
    """RFC 4291 section 2.2: eight 16-bit groups (the last two may be an IPv4 address); `::` stands for one or
    more zero groups, once."""
    def groups(n: int) -> str:  # n groups joined by ':'
        return "" if n == 0 else H16 if n == 1 else rf"{H16}(?::{H16}){{{n - 1}}}"

    forms = [rf"{groups(8)}", rf"{groups(6)}:{IPV4}"]
    for tail_v4 in (False, True):
        total = 6 if tail_v4 else 8  # groups besides the IPv4 tail
        for left in range(total):
            for right in range(total - left):  # `::` stands for at least one group
                right_text = groups(right)
                if tail_v4:
                    right_text = f"{right_text}:{IPV4}" if right else IPV4
                forms.append(f"{groups(left)}::{right_text}")
    return "(?:" + "|".join(forms) + ")"


UCSCHAR = (r"\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef\U00010000-\U0001fffd\U00020000-\U0002fffd"
           r"\U00030000-\U0003fffd\U00040000-\U0004fffd\U00050000-\U0005fffd\U00060000-\U0006fffd"
           r"\U00070000-\U0007fffd\U00080000-\U0008fffd\U00090000-\U0009fffd\U000a0000-\U000afffd"
           r"\U000b0000-\U000bfffd\U000c0000-\U000cfffd\U000d0000-\U000dfffd\U000e1000-\U000efffd")
IPRIVATE = r"\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd"


def uri(reference: bool = False, international: bool = False) -> str:
    """RFC 3986 section 3 `URI` (scheme ":" hier-part ["?" query] ["#" fragment]), without IPvFuture;
    `reference`: a URI-reference (section 4.1, a relative reference too); `international`: RFC 3987's IRI."""
    unreserved, sub_delims, pct = r"A-Za-z0-9._~\-" + (UCSCHAR if international else ""), r"!$&'()*+,;=", r"%[0-9A-Fa-f]{2}"
    pchar = rf"(?:[{unreserved}{sub_delims}:@]|{pct})"
    segment, segment_nz = f"{pchar}*", f"{pchar}+"
    segment_nz_nc = rf"(?:[{unreserved}{sub_delims}@]|{pct})+"
    userinfo = rf"(?:[{unreserved}{sub_delims}:]|{pct})*"
    host = rf"(?:\[{ipv6()}\]|(?:[{unreserved}{sub_delims}]|{pct})*)"
    authority = rf"(?:{userinfo}@)?{host}(?::[0-9]*)?"
    hier = rf"(?://{authority}(?:/{segment})*|/(?:{segment_nz}(?:/{segment})*)?|{segment_nz}(?:/{segment})*|)"
    query = rf"(?:{pchar}|[/?{IPRIVATE if international else ''}])*"
    fragment = rf"(?:{pchar}|[/?])*"
    absolute = rf"[A-Za-z][A-Za-z0-9+.\-]*:{hier}(?:\?{query})?(?:#{fragment})?"
    if not reference:
        return absolute
    relative = rf"(?://{authority}(?:/{segment})*|/(?:{segment_nz}(?:/{segment})*)?|{segment_nz_nc}(?:/{segment})*|)"
    return rf"(?:{absolute}|{relative}(?:\?{query})?(?:#{fragment})?)"


def uri_template() -> str:
    """RFC 6570 URI-Template: literals and `{op var,var:3,list*}` expressions."""
    pct = r"%[0-9A-Fa-f]{2}"
    literal = rf"(?:[\x21\x23\x24\x26-\x3b\x3d\x3f-\x5b\x5d\x5f\x61-\x7a\x7e{UCSCHAR}{IPRIVATE}]|{pct})"
    varchar = rf"(?:[A-Za-z0-9_]|{pct})"
    varspec = rf"{varchar}(?:\.?{varchar})*(?::[1-9][0-9]{{0,3}}|\*)?"
    expression = rf"\{{[+#./;?&=,!@|]?{varspec}(?:,{varspec})*\}}"
    return rf"(?:{literal}|{expression})*"


DURATION = (r"P(?:(?:[0-9]+D|[0-9]+M(?:[0-9]+D)?|[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?)"
            r"(?:T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S))?"
            r"|T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)|[0-9]+W)")
JSON_POINTER = r"(?:/(?:[^~/]|~[01])*)*"


FORMATS = {
    "date": DATE,
    "time": TIME,
    "date-time": f"{DATE}T{TIME}",
    "email": rf"{ATEXT}+(?:\.{ATEXT}+)*@{LABEL}(?:\.{LABEL})*",
    "hostname": rf"{HOST_LABEL}(?:\.{HOST_LABEL}){{0,7}}",
    "ipv4": IPV4,
    "ipv6": ipv6(),
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "uri": uri(),
    "uri-reference": uri(reference=True),
    "iri": uri(international=True),
    "iri-reference": uri(reference=True, international=True),
    "uri-template": uri_template(),
    "json-pointer": JSON_POINTER,
    "relative-json-pointer": rf"(?:0|[1-9][0-9]*)(?:#|{JSON_POINTER})",
    "duration": DURATION,
}
EXACT = ("date", "ipv4", "ipv6", "uuid", "json-pointer", "relative-json-pointer", "duration", "uri-template")  # exactly their RFC: the others are stricter subsets
TIME_SYNTAX = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?(?:[zZ]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
OVER = {  # for the stricter ones, a superset of their RFC's language (what a `not` or `oneOf` may rely on)
    "time": TIME_SYNTAX,
    "date-time": rf"{DATE}[tT]{TIME_SYNTAX}",
    "email": r"[\s\S]*@[\s\S]*",
    "hostname": r"[A-Za-z0-9.\-]{1,253}",
    "uri": r"[A-Za-z][A-Za-z0-9+.\-]*:[\s\S]*",
    "iri": r"[A-Za-z][A-Za-z0-9+.\-]*:[\s\S]*",
    "uri-reference": r"[\s\S]*",
    "iri-reference": r"[\s\S]*",
}
